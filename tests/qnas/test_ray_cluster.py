"""``--executor ray --ray-address``: a search fans its evaluations out to a Ray cluster that is already
running (here a local head started in another process), with the results of a local search."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest

from qnas.errors import ConfigError
from qnas.options import SearchConfig

HEAD = """
import sys, ray
ctx = ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
print(ctx.address_info["address"], flush=True)
sys.stdin.read()  # until the test closes stdin
ray.shutdown()
"""
# one worker runs every test that starts Ray (pytest -n 2 --dist loadgroup)
pytestmark = pytest.mark.xdist_group("ray")

SMALL = dict(n_candidates=3, batch=3, accuracy="zero-cost", progress=False)


@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head in another process; its address, and the auth token a driver needs (Ray >= 2.59
    authenticates local clusters by token: the head and this process share one through the environment)."""
    pytest.importorskip("ray")  # a dev dependency: present on CI
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    proc = subprocess.Popen([sys.executable, "-c", HEAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, **auth})
    try:
        address = proc.stdout.readline().strip()
        assert address, "the Ray head did not start"
        yield address, auth
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_search_on_a_running_ray_cluster_matches_a_local_search(ray_head, tmp_path):
    """`qnas search --executor ray --ray-address ADDRESS` (a driver process of its own, with the cluster's
    token in its environment) gives the records of the same search run here in-process."""
    import json

    from qnas.searching import search

    address, auth = ray_head
    local = search(out=tmp_path / "local", **SMALL)
    cmd = [sys.executable, "-m", "qnas", "search", "--executor", "ray", "--ray-address", address,
           "--accuracy", "zero-cost", "--candidates", "3", "--batch", "3", "--no-progress", "--out", str(tmp_path / "ray")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, **auth})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # recorded as each Ray task finishes: in completion order, each line with its index
    remote = sorted((json.loads(line) for line in (tmp_path / "ray" / "history.jsonl").read_text().splitlines()),
                    key=lambda r: r["index"])
    assert [r["uid"] for r in remote] == [r["uid"] for r in local.records]
    assert [r["val_acc"] for r in remote] == pytest.approx([r["val_acc"] for r in local.records], rel=1e-6)


def test_ray_address_needs_the_ray_executor():
    with pytest.raises(ConfigError, match="--executor ray"):
        SearchConfig(ray_address="127.0.0.1:6379").validate()


RESOURCES = """
import json, sys
from qnas.executors import executor_from_config
from qnas.options import SearchConfig
ex = executor_from_config(SearchConfig(executor="ray", ray_address=sys.argv[1]))
try:
    got = ex.map(lambda x: dict(__import__("ray").get_runtime_context().get_assigned_resources()), [0, 1])
finally:
    ex.close()
print(json.dumps({"options": ex.task_options, "assigned": got}))
"""


@pytest.mark.slow
def test_cpu_search_tasks_request_one_cpu_and_no_gpu_on_a_real_cluster(ray_head):
    """What a real Ray scheduler gives each task of a CPU search: the one CPU it requested, no GPU (a driver
    process of its own: Ray reads the cluster's token from the environment when it is imported)."""
    import json

    address, auth = ray_head
    proc = subprocess.run([sys.executable, "-c", RESOURCES, address], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **auth})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["options"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert out["assigned"] == [{"CPU": 1.0}, {"CPU": 1.0}]
