"""``--executor ray``: what each evaluation task asks Ray for (CPUs, GPUs), and that a task given a GPU
evaluates on it. Ray itself is replaced by a recording stand-in, so this needs neither a Ray runtime
nor a GPU."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from qnas.errors import ConfigError
from qnas.executors import (
    RayExecutor,
    assigned_cuda_device,
    create_executor,
    evaluator_torch_device,
    executor_from_config,
    ray_task_resources,
)
from qnas.options import SearchConfig


class FakeRay:
    """Records ``init``, ``remote(...).options(...)`` and runs each task at once, in this process."""

    def __init__(self, gpu_ids=()):
        self.initialized, self.init_kwargs, self.options_seen, self.task_args = False, None, [], []
        self.gpu_ids, self._store = list(gpu_ids), {}

    def is_initialized(self):
        return self.initialized

    def init(self, **kwargs):
        self.initialized, self.init_kwargs = True, kwargs

    def shutdown(self):
        self.initialized = False

    def put(self, obj):
        ref = ("ref", len(self._store))
        self._store[ref] = obj
        return ref

    def get(self, results):
        return results

    def get_gpu_ids(self):
        return self.gpu_ids

    def remote(self, *args, **kwargs):
        assert not kwargs and len(args) == 1 and callable(args[0]), "ray.remote(fn): options come per map"
        return _FakeRemote(self, args[0], {})


class _FakeRemote:
    def __init__(self, ray, fn, opts):
        self.ray, self.fn, self.opts = ray, fn, opts

    def options(self, **opts):
        self.ray.options_seen.append(opts)
        return _FakeRemote(self.ray, self.fn, opts)

    def remote(self, *args):
        args = [self.ray._store.get(a, a) if isinstance(a, tuple) else a for a in args]
        self.ray.task_args.append(args[1:])
        return self.fn(*args)


class Evaluator:
    """Like qnas' TrainingEvaluator: a ``torch_device`` name it trains on."""

    def __init__(self, torch_device="cpu"):
        self.torch_device = torch_device

    def __call__(self, x):
        return {"x": x, "torch_device": self.torch_device}


@pytest.fixture
def fake_ray(monkeypatch):
    ray = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", ray)
    return ray


def test_a_cpu_search_requests_no_gpus(fake_ray):
    cfg = SearchConfig(executor="ray")
    ex = executor_from_config(cfg)
    assert isinstance(ex, RayExecutor) and fake_ray.init_kwargs["address"] is None
    assert ex.map(Evaluator("cpu"), [1, 2]) == [{"x": 1, "torch_device": "cpu"}, {"x": 2, "torch_device": "cpu"}]
    assert fake_ray.options_seen == [{"num_cpus": 1.0, "num_gpus": 0.0}]
    assert [a[1] for a in fake_ray.task_args] == [False, False]  # not pointed at any GPU
    ex.close()
    assert not fake_ray.initialized


def test_a_cuda_search_requests_one_gpu_per_task_and_uses_the_one_ray_assigned(fake_ray, monkeypatch):
    fake_ray.gpu_ids = ["2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")  # what Ray sets for a task given GPU 2
    cfg = SimpleNamespace(executor="ray", ray_address="10.0.0.1:6379", torch_device="cuda:1")
    ex = executor_from_config(cfg)
    assert fake_ray.init_kwargs["address"] == "10.0.0.1:6379"
    ev = Evaluator("cuda:1")
    assert ex.map(ev, [7]) == [{"x": 7, "torch_device": "cuda:0"}]
    assert fake_ray.options_seen == [{"num_cpus": 1.0, "num_gpus": 1.0}]
    assert ev.torch_device == "cuda:1"  # the task moved its own copy


def test_configured_gpus_and_cpus_per_task_reach_the_task_options(fake_ray):
    cfg = SimpleNamespace(executor="ray", ray_address=None, torch_device="cuda", ray_gpus_per_task=0.5,
                          ray_cpus_per_task=2)
    executor_from_config(cfg).map(Evaluator("cuda"), [0])
    assert fake_ray.options_seen == [{"num_cpus": 2.0, "num_gpus": 0.5}]
    ex = create_executor("ray", torch_device="cuda", gpus_per_task=0, cpus_per_task=3)
    ex.map(Evaluator("cuda"), [0])
    assert fake_ray.options_seen[-1] == {"num_cpus": 3.0, "num_gpus": 0.0}


def test_without_a_torch_device_the_evaluator_s_own_decides(fake_ray):
    """``create_executor("ray", address=...)`` as qnas.searching calls it: the torch device is the evaluator's."""
    ex = create_executor("ray", address=None)
    ex.map(Evaluator("cuda"), [0])
    ex.map(lambda x: {"x": x}, [0])  # a plain function says nothing: no GPU
    ex.map(Evaluator("cpu"), [0])
    assert [o["num_gpus"] for o in fake_ray.options_seen] == [1.0, 0.0, 0.0]


def test_options_are_computed_once_per_evaluator(fake_ray):
    ex = create_executor("ray", torch_device="cpu")
    ev = Evaluator()
    ex.map(ev, [1, 2])
    ex.map(ev, [3])
    assert len(fake_ray._store) == 1 and ex.task_options == {"num_cpus": 1.0, "num_gpus": 0.0}


@pytest.mark.parametrize("kwargs,match", [
    (dict(torch_device="cpu", gpus_per_task=1), "needs a CUDA torch device"),
    (dict(torch_device="cuda", gpus_per_task=-1), r"gpus_per_task \(--ray-gpus-per-task\) must be"),
    (dict(torch_device="cuda", gpus_per_task=1.5), "whole number"),
    (dict(torch_device="cuda", gpus_per_task="1"), "must be a number"),
    (dict(torch_device="cpu", cpus_per_task=-0.5), r"cpus_per_task \(--ray-cpus-per-task\)"),
    (dict(torch_device="cpu", cpus_per_task=0), "both 0"),
])
def test_bad_counts_are_refused_before_ray_starts(fake_ray, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_executor("ray", **kwargs)
    assert fake_ray.init_kwargs is None


def test_task_resources():
    assert ray_task_resources("cpu") == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert ray_task_resources("cuda") == ray_task_resources("cuda:3") == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert ray_task_resources("mps") == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert ray_task_resources(None, gpus_per_task=1) == {"num_cpus": 1.0, "num_gpus": 1.0}  # unknown: as asked
    assert ray_task_resources("cuda", gpus_per_task=0.25, cpus_per_task=0) == {"num_cpus": 0.0, "num_gpus": 0.25}


def test_assigned_cuda_device():
    assert assigned_cuda_device([]) is None
    assert assigned_cuda_device(["2"], "2") == "cuda:0"  # Ray narrowed CUDA_VISIBLE_DEVICES to the task's GPU
    assert assigned_cuda_device(["2", "3"], "2,3") == "cuda:0"
    assert assigned_cuda_device([2], "0,1,2,3") == "cuda:2"  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES
    assert assigned_cuda_device([1], None) == "cuda:1"
    assert assigned_cuda_device(["GPU-abc"], "GPU-abc") == "cuda:0"


def test_evaluator_torch_device():
    import torch

    assert evaluator_torch_device(Evaluator("cuda")) == "cuda"
    assert evaluator_torch_device(SimpleNamespace(device=torch.device("cpu"))) == "cpu"  # ZeroCostEvaluator
    assert evaluator_torch_device(SimpleNamespace(supernet=torch.nn.Linear(2, 2))) == "cpu"  # SupernetEvaluator
    assert evaluator_torch_device(lambda x: x) is None


def test_real_ray_accepts_the_task_options():
    ray = pytest.importorskip("ray")
    from qnas.executors import _call

    for opts in (ray_task_resources("cpu"), ray_task_resources("cuda"),
                 ray_task_resources("cuda", gpus_per_task=0.5, cpus_per_task=2)):
        ray.remote(_call).options(**opts)  # validated by Ray without starting it


def test_search_config_checks_ray_task_resources():
    from qnas.errors import ConfigError
    from qnas.options import SearchConfig

    with pytest.raises(ConfigError, match="need executor='ray'"):
        SearchConfig(ray_gpus_per_task=1).validate()
    with pytest.raises(ConfigError):
        SearchConfig(executor="ray", ray_gpus_per_task=1, torch_device="cpu").validate()  # GPUs for a CPU search
    assert SearchConfig(executor="ray", ray_cpus_per_task=2).validate().ray_cpus_per_task == 2
