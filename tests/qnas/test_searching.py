"""Search runs: history, resume without repeating work, determinism, Ray fan-out."""
import json

import pytest

import qnas.evaluators
from qnas.errors import ConfigError
from qnas.searching import resume_search, search

SMALL = dict(n_candidates=4, batch=2, epochs=1, threads=1, progress=False)


def _strip(records):
    return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    return out, search(out=out, **SMALL)


def test_run_directory_contents(finished_run):
    out, result = finished_run
    for name in ("config.json", "history.jsonl", "front.json", "pareto.png", "progress.png"):
        assert (out / name).is_file(), name
    history = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert [h["index"] for h in history] == [0, 1, 2, 3]
    assert len(list((out / "candidates").glob("*.pt"))) == 4
    front = json.loads((out / "front.json").read_text())
    assert front == result.front and len(front) >= 1
    assert result.best()["val_acc"] == max(r["val_acc"] for r in result.records)


def test_same_seed_same_front(finished_run, tmp_path):
    _, first = finished_run
    again = search(out=tmp_path / "again", **SMALL)
    assert _strip(again.records) == _strip(first.records)
    assert _strip(again.front) == _strip(first.front)


def test_resume_continues_without_repeating(finished_run, tmp_path, monkeypatch):
    src, full = finished_run
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.json").write_text((src / "config.json").read_text())
    lines = (src / "history.jsonl").read_text().splitlines()
    # killed during the 4th evaluation: 3 complete lines and a torn one
    (killed / "history.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    calls = []
    original = qnas.evaluators.TrainingEvaluator.__call__

    def counting(self, arch):
        calls.append(arch.uid)
        return original(self, arch)

    monkeypatch.setattr(qnas.evaluators.TrainingEvaluator, "__call__", counting)
    resumed = resume_search(killed, progress=False)
    assert calls == [full.records[3]["uid"]], "only the unfinished evaluation runs again"
    assert _strip(resumed.records) == _strip(full.records)
    history = [json.loads(l) for l in (killed / "history.jsonl").read_text().splitlines() if l.startswith("{") and l.endswith("}")]
    assert [h["index"] for h in history] == [0, 1, 2, 3]


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        resume_search(tmp_path)


def test_ray_executor_gives_identical_results(finished_run, tmp_path):
    pytest.importorskip("ray")  # a dev dependency: present on CI, so this never skips there
    _, local = finished_run
    remote = search(out=tmp_path / "ray", executor="ray", **SMALL)
    assert _strip(remote.records) == _strip(local.records)


def test_supernet_initial_weights_depend_only_on_the_seed(monkeypatch, digits_splits):
    """Two processes (here: two global RNG states) with the same seed start from the same supernet."""
    import torch

    import qnas.supernet
    from qnas.searching import SearchConfig, obtain_supernet
    from qnas.space import SearchSpace

    monkeypatch.setattr(qnas.supernet, "train_supernet", lambda *a, **k: None)
    cfg = SearchConfig(accuracy="supernet", seed=3)
    states = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        states.append(obtain_supernet(cfg, SearchSpace(), digits_splits, None, False).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    cfg2 = SearchConfig(accuracy="supernet", seed=4)
    other = obtain_supernet(cfg2, SearchSpace(), digits_splits, None, False).state_dict()
    assert not all(torch.equal(states[0][k], other[k]) for k in states[0])
