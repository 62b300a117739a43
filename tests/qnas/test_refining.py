"""Refining a search's best candidates (qnas.refining) and choosing by the refined accuracy."""
from __future__ import annotations

import json

import pytest
import torch

from qnas.errors import ConfigError
from qnas.options import SearchConfig
from qnas.refining import REFINED_FILE, refine_candidates, refine_targets
from qnas.rundir import RunDir
from qnas.searching import SearchResult
from qnas.strategies import Budget


def _record(arch, val_acc: float, latency_ms: float, index: int = 0) -> dict:
    return {"index": index, "uid": arch.uid, "arch": arch.to_dict(), "val_acc": val_acc, "latency_ms": latency_ms,
            "size_kb": 10.0, "peak_act_kb": 1.0}


def test_targets_are_the_most_accurate_within_budget_once_each(archs):
    a, b, c, d = archs[:4]
    recs = [_record(a, 0.9, 2.0), _record(b, 0.5, 0.5), _record(c, 0.7, 0.9), _record(c, 0.7, 0.9, 3),
            _record(d, 0.6, 0.4)]
    got = refine_targets(recs, Budget(1.0), top=2)
    assert [r["uid"] for r in got] == [c.uid, d.uid]  # a is over budget; c counted once
    assert refine_targets(recs, Budget(1.0), top=0) == []


def test_best_chooses_among_refined_archs_by_refined_accuracy(space, archs):
    a, b, c = archs[:3]
    recs = [_record(a, 0.80, 0.5), _record(b, 0.60, 0.6), _record(c, 0.95, 0.3)]
    result = SearchResult(space, recs, budget=Budget(1.0))
    assert result.best()["uid"] == c.uid  # nothing refined: the search's accuracy
    result.refined = {a.uid: {"uid": a.uid, "val_acc": 0.80, "refined_val_acc": 0.91, "epochs": 3},
                      b.uid: {"uid": b.uid, "val_acc": 0.60, "refined_val_acc": 0.97, "epochs": 3}}
    best = result.best()
    assert best["uid"] == b.uid and best["refined_val_acc"] == 0.97 and best["val_acc"] == 0.60
    assert result.best(0.55)["uid"] == a.uid  # b is over this budget
    assert result.best(0.4)["uid"] == c.uid  # no refined arch within it: back to the search's accuracy


class _StateEvaluator:
    """An accuracy source that kept a trained state per arch (as TrainingEvaluator does)."""

    def __init__(self, state):
        self._state = state

    def state(self, arch):
        return self._state


def test_refine_trains_writes_and_resumes(trained_digits_model, archs, digits_splits, tmp_path, monkeypatch):
    space, a, model = trained_digits_model  # a candidate the accuracy source trained (3 epochs)
    torch.set_num_threads(1)
    b = archs[1]
    recs = [_record(a, 0.3, 0.4), _record(b, 0.2, 0.5, 1)]
    run = RunDir(tmp_path / "run")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = refine_candidates(space, recs, digits_splits, Budget(1.0), top=1, epochs=1, run=run, progress=False,
                            evaluator=_StateEvaluator(state))
    assert list(got) == [a.uid]
    entry = got[a.uid]
    assert entry["start"] == "candidate" and entry["epochs"] == 1 and 0.0 <= entry["refined_val_acc"] <= 1.0
    assert entry["refined_val_acc"] > 0.5  # it went on from the trained state (chance: 0.1)
    assert json.loads(run.file(REFINED_FILE).read_text()) == got

    def no_training(*args, **kwargs):
        raise AssertionError("a refined arch was trained again")

    monkeypatch.setattr("qnas.quant.qat.qat", no_training)
    assert refine_candidates(space, recs, digits_splits, Budget(1.0), top=1, epochs=1, run=run,
                             progress=False) == got  # reused from refined.json
    with pytest.raises(AssertionError, match="trained again"):  # other epochs: not the same refinement
        refine_candidates(space, recs, digits_splits, Budget(1.0), top=1, epochs=2, run=run, progress=False)


def test_bad_refine_settings_and_files_are_one_line_errors(space, archs, digits_splits, tmp_path):
    with pytest.raises(ConfigError, match="refine_top must be an integer >= 0"):
        SearchConfig(refine_top=-1).validate()
    with pytest.raises(ConfigError, match="refine_epochs must be a positive integer"):
        SearchConfig(refine_top=2, refine_epochs=0).validate()
    run = RunDir(tmp_path / "run")
    run.file(REFINED_FILE).write_text("[1, 2")
    with pytest.raises(ConfigError, match="delete it to refine again") as e:
        refine_candidates(space, [_record(archs[0], 0.3, 0.4)], digits_splits, Budget(1.0), top=1, epochs=1,
                          run=run, progress=False)
    assert "\n" not in str(e.value)


def test_search_cli_refines_and_resumes_from_refined_json(tmp_path, capsys):
    from .cli.test_cli import run_cli

    run = tmp_path / "run"
    argv = ["search", "--accuracy", "zero-cost", "--candidates", "4", "--refine-top", "1", "--refine-epochs", "1",
            "--out", str(run), "--no-progress"]
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    refined = json.loads((run / "refined.json").read_text())
    (entry,) = refined.values()
    assert entry["start"] == "scratch" and entry["epochs"] == 1  # a zero-cost proxy leaves no weights
    assert f"{entry['uid']}" in out and "refined within" in out and " *" in out
    code, out2, err = run_cli(capsys, "search", "--resume", str(run), "--no-progress")
    assert code == 0, err
    assert json.loads((run / "refined.json").read_text()) == refined  # reused, not trained again


def test_finishing_goes_on_from_the_refined_weights(trained_digits_model, archs, digits_splits, tmp_path):
    from qnas.finishing import _run_weights, resolve_source
    from qnas.quant.train import evaluate
    from qnas.refining import REFINED_DIR

    space, a, model = trained_digits_model
    torch.set_num_threads(1)
    run = RunDir(tmp_path / "run")
    run.write_json("config.json", {"space": space.to_dict(), "seed": 0})
    run.write_json("arch.json", a.to_dict())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = refine_candidates(space, [_record(a, 0.3, 0.4)], digits_splits, Budget(1.0), top=1, epochs=1, run=run,
                            progress=False, evaluator=_StateEvaluator(state))
    assert (run.file(REFINED_DIR) / f"{a.uid}.pt").is_file()
    src = resolve_source(run.path)
    assert src.refined_path == run.file(REFINED_DIR) / f"{a.uid}.pt" and src.has_weights
    start, desc = _run_weights(src, digits_splits)
    assert desc == "refined (1 QAT epochs)"
    from qnas.data import ResizedSplits

    val = ResizedSplits(digits_splits)("val", a.resolution).loader(512, False)
    assert evaluate(start, val) == pytest.approx(got[a.uid]["refined_val_acc"], abs=1e-9)  # the very model refined
