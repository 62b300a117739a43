"""Every strategy and accuracy source runs through the same search loop and CLI."""
import json

import pytest

from qnas.cli import main
from qnas.searching import search

FAST = dict(progress=False, threads=1)


def test_nsga2_with_untrained_supernet_source(tmp_path):
    r = search(strategy="nsga2", strategy_options={"pop_size": 8}, accuracy="supernet", supernet_epochs=0,
               n_candidates=12, batch=4, out=tmp_path / "run", **FAST)
    assert len(r.records) == 12 and len({x["uid"] for x in r.records}) == 12
    assert all(0.0 <= x["val_acc"] <= 1.0 and "eval_seconds" in x for x in r.records)


def test_ofa_fits_its_predictor_and_meets_the_budget(tmp_path):
    from qnas.latency import create_latency_model
    from qnas.space import SearchSpace

    space = SearchSpace()
    lat = create_latency_model("cpu-ort")
    budget = sorted(lat.predict(space.plan(space.sample(i))) for i in range(40))[12]
    r = search(strategy="ofa", accuracy="zero-cost", n_candidates=4, batch=4, latency_budget_ms=budget,
               strategy_options={"predictor_samples": 16, "population_size": 20, "generations": 5},
               out=tmp_path / "ofa", **FAST)
    assert len(r.records) == 4
    assert all(x["latency_ms"] <= budget for x in r.records)
    assert (tmp_path / "ofa" / "accuracy_predictor.json").is_file()


def test_cli_search_nsga3_zero_cost_with_budget(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["search", "--strategy", "nsga3", "--accuracy", "zero-cost", "--candidates", "8", "--batch", "8",
                 "--strategy-options", json.dumps({"pop_size": 8}), "--size-kb", "60", "--out", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["strategy"] == "nsga3" and cfg["size_budget_kb"] == 60
    assert "Pareto front" in capsys.readouterr().out


def test_bad_strategy_and_source_are_one_line_errors(tmp_path, capsys):
    assert main(["search", "--strategy", "annealing", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "annealing" in err and "nsga2" in err
    assert main(["search", "--accuracy", "predictor", "--out", str(tmp_path / "b")]) == 2
    assert "--accuracy-path" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_differentiable_meets_its_budget(tmp_path, capsys):
    from qnas.latency import create_latency_model
    from qnas.space import SearchSpace

    space = SearchSpace()
    lat = create_latency_model("cpu-ort")
    budget = sorted(lat.predict(space.plan(space.sample(i))) for i in range(40))[16]
    out = tmp_path / "diff"
    code = main(["search", "--strategy", "differentiable", "--accuracy", "zero-cost", "--candidates", "2",
                 "--budget-ms", str(budget), "--out", str(out), "--no-progress",
                 "--strategy-options", json.dumps({"epochs": 1, "warmup_epochs": 0, "steps_per_epoch": 4})])
    assert code == 0, capsys.readouterr().err
    history = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(h["latency_ms"] <= budget for h in history)


# ---- the registry ------------------------------------------------------------------------
def test_registry_names_unknown_and_cli_choices(capsys):
    from qnas.accuracy_sources import accuracy_source, accuracy_source_names
    from qnas.errors import ConfigError
    from qnas.options import SearchConfig

    assert accuracy_source_names() == ["train", "supernet", "predictor", "zero-cost"]
    assert accuracy_source_names(without_path=True) == ["train", "supernet", "zero-cost"]
    with pytest.raises(ConfigError, match=r"unknown accuracy source 'oracle'; choose one of \['train'"):
        accuracy_source("oracle")
    with pytest.raises(ConfigError, match="unknown accuracy source"):
        SearchConfig(accuracy="oracle").validate()
    with pytest.raises(SystemExit):  # the CLI's --accuracy choices are the registry's names
        main(["search", "--accuracy", "oracle"])
    assert "zero-cost" in capsys.readouterr().err


def test_a_registered_source_runs_in_a_search(tmp_path):
    from qnas.accuracy_sources import _REGISTRY, register_accuracy_source

    seen = []

    def constant(cfg, space, splits, run, progress):
        def evaluate(arch):
            seen.append(arch.uid)
            return {"val_acc": 0.5}
        return evaluate

    register_accuracy_source("constant", constant)
    try:
        r = search(accuracy="constant", n_candidates=3, batch=3, out=tmp_path / "run", **FAST)
    finally:
        _REGISTRY.pop("constant")
    assert [x["uid"] for x in r.records] == seen and all(x["val_acc"] == 0.5 for x in r.records)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["accuracy"] == "constant"


@pytest.fixture(scope="module")
def predictor_file(tmp_path_factory):
    from qnas.predictors import AccuracyPredictor
    from qnas.space import SearchSpace

    space = SearchSpace()
    archs = [space.sample(i) for i in range(16)]
    path = tmp_path_factory.mktemp("pred") / "predictor.json"
    AccuracyPredictor(space, seed=0).fit(archs, [0.5 + 0.01 * i for i in range(16)]).save(path)
    return path


def _contract_names():
    from qnas.accuracy_sources import accuracy_source_names

    return accuracy_source_names()


@pytest.mark.parametrize("name", _contract_names())
def test_every_source_scores_archs(name, digits_splits, predictor_file):
    """The accuracy-source contract, for every registered source: built for a search config, it scores
    an arch as a record with a finite ``val_acc`` (higher is better; an accuracy in [0, 1] except for a
    zero-cost proxy's score)."""
    import math

    from qnas.accuracy_sources import accuracy_source, create_accuracy_source
    from qnas.data import Splits
    from qnas.options import SearchConfig
    from qnas.space import SearchSpace

    small = Splits(digits_splits.train.subset(range(256)), digits_splits.val.subset(range(128)), digits_splits.test)
    space = SearchSpace()
    cfg = SearchConfig(accuracy=name, epochs=1, supernet_epochs=0, threads=1,
                       accuracy_path=str(predictor_file) if accuracy_source(name).path_needed else None)
    record = create_accuracy_source(name, cfg, space, small, None, False)(space.sample(0))
    assert isinstance(record, dict) and math.isfinite(record["val_acc"])
    if name != "zero-cost":
        assert 0.0 <= record["val_acc"] <= 1.0
