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


@pytest.mark.parametrize("tamper, needle", [
    (lambda rec: {**rec, "arch": {**rec["arch"], "resolution": 99}}, "cannot have"),
    (lambda rec: {**rec, "arch": {**rec["arch"], "width": 0.5}}, "edited?"),
    (lambda rec: {**rec, "val_acc": float("nan")}, "not a finite number"),
    (lambda rec: {k: v for k, v in rec.items() if k != "arch"}, "lacks"),
])
def test_resume_refuses_edited_history_records(finished_run, tmp_path, tamper, needle):
    src, _ = finished_run
    run = tmp_path / "edited"
    run.mkdir()
    (run / "config.json").write_text((src / "config.json").read_text())
    recs = [json.loads(l) for l in (src / "history.jsonl").read_text().splitlines()]
    recs[1] = tamper(recs[1])
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(ConfigError, match=needle) as e:
        resume_search(run, progress=False)
    assert "record 1" in str(e.value) and "delete that line" in str(e.value) and "\n" not in str(e.value)
    assert not (run / "front.json").exists()


@pytest.mark.parametrize("damage", ["binary", "directory"])
def test_resume_with_unreadable_history_is_one_line_error(finished_run, tmp_path, damage):
    src, _ = finished_run
    run = tmp_path / "damaged"
    run.mkdir()
    (run / "config.json").write_text((src / "config.json").read_text())
    if damage == "binary":
        (run / "history.jsonl").write_bytes(b"\xff\xfe\x00\x81")
    else:
        (run / "history.jsonl").mkdir()
    with pytest.raises(ConfigError, match="history.jsonl is not a") as e:
        resume_search(run, progress=False)
    assert "move it away" in str(e.value)


def test_resume_needs_a_run(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        resume_search(tmp_path)


# one worker runs every test that starts Ray (pytest -n 2 --dist loadgroup), so no two local clusters meet
@pytest.mark.xdist_group("ray")
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


def test_each_evaluation_is_recorded_as_it_finishes(tmp_path, monkeypatch):
    """A batch killed in its second evaluation keeps the first (recorded at once), and resume reuses it."""
    calls = []
    original = qnas.evaluators.TrainingEvaluator.__call__

    def dies_at_second(self, arch):
        calls.append(arch.uid)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, arch)

    monkeypatch.setattr(qnas.evaluators.TrainingEvaluator, "__call__", dies_at_second)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        search(out=run, n_candidates=2, batch=2, epochs=1, threads=1, progress=False)
    history = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()]
    assert [h["uid"] for h in history] == calls[:1]
    monkeypatch.setattr(qnas.evaluators.TrainingEvaluator, "__call__", original)
    resumed = resume_search(run, progress=False)
    assert resumed.records[0] == history[0] and len(resumed.records) == 2


def test_resume_reuses_a_trained_candidate_that_was_not_recorded(finished_run, tmp_path, monkeypatch):
    """Killed after a candidate's state was saved but before its record: resume takes the saved result."""
    import shutil

    src, full = finished_run
    run = tmp_path / "killed"
    shutil.copytree(src, run)
    lines = (run / "history.jsonl").read_text().splitlines()
    (run / "history.jsonl").write_text("\n".join(lines[:2]) + "\n")  # records 2 and 3 lost, states kept

    def no_training(*args, **kwargs):
        raise AssertionError("a candidate with a saved state was trained again")

    monkeypatch.setattr(qnas.evaluators, "train", no_training)
    resumed = resume_search(run, progress=False)
    assert _strip(resumed.records) == _strip(full.records)
