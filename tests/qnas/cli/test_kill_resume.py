"""Kill a real ``qnas finish qat`` process at several points, rerun the same command, and get the
uninterrupted run's model bit for bit (issue 14: resume reproduces the uninterrupted result)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qnas.quant.checkpoint import load_checkpoint
from qnas.space import SearchSpace

EPOCHS = 3


def _command(arch: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "qnas", "finish", "qat", str(arch), "--data", "digits", "--epochs", str(EPOCHS),
            "--init", "scratch", "--teacher", "none", "--seed", "0", "--no-progress", "--out", str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _epochs_saved(state: Path) -> int:
    try:
        return int(torch.load(state, weights_only=True)["epoch"])
    except Exception:  # not there yet
        return 0


@pytest.fixture(scope="module")
def arch_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("arch") / "arch.json"
    path.write_text(SearchSpace().uniform(8, 4, largest=False, resolution=12).to_json())
    return path


@pytest.fixture(scope="module")
def uninterrupted(arch_file, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("full") / "model.pt"
    subprocess.run(_command(arch_file, out), check=True, env=_env(), capture_output=True, timeout=600)
    return load_checkpoint(out)[0]


@pytest.mark.parametrize("sig,after_epochs,delay", [
    (signal.SIGKILL, 1, 0.0),   # right after the first epoch's state is written
    (signal.SIGKILL, 1, 1.0),   # in the middle of the second epoch
    (signal.SIGINT, 2, 0.0),    # Ctrl-C after the second epoch
])
def test_killed_finish_resumes_to_the_uninterrupted_model(arch_file, uninterrupted, tmp_path, sig, after_epochs, delay):
    out = tmp_path / "model.pt"
    state = out.with_name("model.qat-state.pt")
    proc = subprocess.Popen(_command(arch_file, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 600
    while _epochs_saved(state) < after_epochs and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1].decode()
    if proc.returncode == 0:
        pytest.fail(f"the run finished before the kill (after {after_epochs} epochs + {delay} s); {err[-300:]}")
    assert not out.exists() and 1 <= _epochs_saved(state) < EPOCHS  # killed in the middle, the state kept
    if sig == signal.SIGINT:
        assert "Traceback" not in err

    resumed = subprocess.run(_command(arch_file, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-500:]
    assert not state.exists()  # removed once the model is written
    got = load_checkpoint(out)[0]
    assert got.keys() == uninterrupted.keys()
    assert [k for k in got if not torch.equal(got[k], uninterrupted[k])] == []


# ---- search ----------------------------------------------------------------------
SEARCH = ["--accuracy", "train", "--epochs", "1", "--candidates", "4", "--batch", "1", "--seed", "3", "--no-progress"]


def _timeless(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]


def _records(run: Path) -> list[dict]:
    lines = (run / "history.jsonl").read_text().splitlines()
    return sorted(_timeless([json.loads(line) for line in lines if line.strip()]), key=lambda r: r["index"])


def test_killed_search_resumes_to_the_uninterrupted_records(tmp_path):
    full = tmp_path / "full"
    subprocess.run([sys.executable, "-m", "qnas", "search", *SEARCH, "--out", str(full)], check=True, env=_env(),
                   capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "qnas", "search", *SEARCH, "--out", str(killed)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = killed / "history.jsonl"
    deadline = time.monotonic() + 600
    while (not history.exists() or len(history.read_text().splitlines()) < 2) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    recorded = len(history.read_text().splitlines())
    if proc.returncode == 0 or recorded >= 4:
        pytest.fail("the search finished before the kill")
    resumed = subprocess.run([sys.executable, "-m", "qnas", "search", "--resume", str(killed), "--no-progress"],
                             env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-500:]
    assert _records(killed) == _records(full)
    front = [json.loads((run / "front.json").read_text()) for run in (killed, full)]
    assert _timeless(front[0]) == _timeless(front[1])
