"""The latency CLI and the predictor kinds as a search uses them."""
import json

import pytest

from qnas.cli import main
from qnas.errors import ConfigError, UnknownTargetError
from qnas.latency import HybridLatencyModel, MeasuredLatencyModel, create_latency_model, load_table
from qnas.searching import make_latency_model
from qnas.space import SearchSpace


def test_show_prints_native_precisions_and_sources(capsys):
    assert main(["latency", "show", "edgetpu"]) == 0
    out = capsys.readouterr().out
    assert "native w8a8" in out and "fallback" in out and "coral.ai" in out


def test_unknown_device_lists_known_ones(capsys):
    assert main(["latency", "show", "tpu9000"]) == 2
    err = capsys.readouterr().err
    assert "tpu9000" in err and "edgetpu" in err and "hexagon-htp" in err


def test_predict_from_inline_json_and_bad_arch(capsys):
    arch = SearchSpace().sample(4)
    assert main(["latency", "predict", arch.to_json(), "--device", "hexagon-htp", "--breakdown"]) == 0
    out = capsys.readouterr().out
    ms = create_latency_model("hexagon-htp").predict(SearchSpace().plan(arch))
    assert f"{ms:.4g} ms" in out and "s0.b0.expand" in out
    bad = arch.to_dict()
    bad["stages"][0][0]["w"] = [3, 8, 8]
    assert main(["latency", "predict", json.dumps(bad)]) == 2
    assert "w_bits[0]=3" in capsys.readouterr().err


def test_measure_writes_a_table_that_prices_those_archs(tmp_path, capsys):
    out = tmp_path / "t.csv"
    assert main(["latency", "measure", "--archs", "2", "--seed", "5", "--out", str(out), "--repeats", "3",
                 "--no-progress"]) == 0
    table = load_table(out)
    space = SearchSpace()
    import numpy as np

    rng = np.random.default_rng(5)
    model = make_latency_model("cpu-ort", "table", str(out))
    for arch in [space.sample(rng) for _ in range(2)]:
        assert model.predict(space.plan(arch)) > 0
    assert len(table) > 10 and all(v > 0 for v in table.values())
    assert main(["latency", "measure", "--archs", "2", "--out", str(out)]) == 2
    assert "exists; choose another --out or pass --force" in capsys.readouterr().err
    assert main(["latency", "measure", "--device", "edgetpu", "--out", str(tmp_path / "x.json")]) == 2
    assert "import the table" in capsys.readouterr().err


def test_measured_model_fills_missing_layers_and_caches(tmp_path):
    space = SearchSpace()
    cache = tmp_path / "cache.json"
    m = MeasuredLatencyModel(cache=cache, repeats=3, warmup=1)
    ms = m.predict(space.plan(space.sample(0)))
    assert ms > 0 and cache.is_file()
    n = len(load_table(cache))
    again = MeasuredLatencyModel(cache=cache, repeats=3, warmup=1)
    assert again.predict(space.plan(space.sample(0))) == pytest.approx(ms)
    assert len(load_table(cache)) == n, "a cached table is reused, not re-measured"


def test_kinds_need_their_files():
    with pytest.raises(ConfigError, match="--latency-table"):
        make_latency_model("cpu-ort", "table")
    with pytest.raises(ConfigError, match="--latency-hybrid"):
        make_latency_model("cpu-ort", "hybrid")
    with pytest.raises(UnknownTargetError, match="cpu-ort"):
        make_latency_model("edgetpu", "measured")
    with pytest.raises(ConfigError, match="analytic"):
        make_latency_model("cpu-ort", "psychic")


def test_hybrid_kind_loads_a_fitted_correction(tmp_path):
    import numpy as np

    space = SearchSpace()
    base = create_latency_model("cpu-ort")
    archs = [space.sample(i) for i in range(30)]
    # synthetic "measurements": a distortion of the base that the correction can learn
    meas = [1.4 * base.predict(space.plan(a)) + 0.05 for a in archs]
    HybridLatencyModel(base, space).fit(archs, meas).save(tmp_path / "h.json")
    hybrid = make_latency_model("cpu-ort", "hybrid", hybrid=str(tmp_path / "h.json"), space=space)
    probe = space.sample(99)
    truth = 1.4 * base.predict(space.plan(probe)) + 0.05
    assert abs(hybrid.predict(space.plan(probe)) - truth) < abs(base.predict(space.plan(probe)) - truth)
    assert np.isfinite(hybrid.predict(space.plan(probe)))


def test_eval_reports_every_predictor(tmp_path, capsys):
    out = tmp_path / "fid.json"
    assert main(["latency", "eval", "--n", "3", "--passes", "1", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "analytic" in text and "Kendall tau" in text
    res = json.loads(out.read_text())["results"]["analytic"]
    assert res["n"] == 3 and -1 <= res["kendall_tau"] <= 1 and res["mape"] >= 0


# ---- tables as a user brings them -------------------------------------------------------------
def _space_table(tmp_path, *, drop_a4=True, rules=True, name="board.json"):
    """The default space's keys priced by the analytic model, without A4 entries, adds, pool and stem
    (what a published table lacks); with ``rules``: defaults and an A4 -> A8 fallback fill them."""
    from qnas.latency.table import LatencyTable, space_layer_keys

    model = create_latency_model("cpu-ort")
    entries = {l.key(): model.layer_ms(l) for l in space_layer_keys(SearchSpace())
               if not (drop_a4 and l.a_bits == 4) and l.op not in ("add", "pool") and l.name != "stem"}
    kw = dict(defaults={"stem": 0.02, "pool": 0.001, "add": 0.0005},
              fallbacks=[{"a_bits": 4, "use_a_bits": 8}]) if rules else {}
    return LatencyTable(entries, meta={"device": "board-x"}, **kw).save(tmp_path / name)


def test_check_table_lists_missing_keys(tmp_path, capsys):
    bare = _space_table(tmp_path, rules=False, name="bare.json")
    assert main(["latency", "check-table", str(bare), "--limit", "3"]) == 2
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert "missing" in lines[0] and sum(l.startswith("  (op=") for l in lines) == 3
    assert lines[-1].startswith("  ... and ") and "more" in lines[-1]
    assert cap.err.count("\n") == 1 and "cannot price" in cap.err and "--limit 0" in cap.err
    assert main(["latency", "check-table", str(bare), "--limit", "0"]) == 2
    n_missing = sum(l.startswith("  (op=") for l in capsys.readouterr().out.splitlines())
    assert n_missing > 100
    ruled = _space_table(tmp_path)
    assert main(["latency", "check-table", str(ruled)]) == 0
    out = capsys.readouterr().out
    assert "prices all" in out and "by fallback a_bits=4 -> a_bits=8" in out and "by default pool" in out
    space_yaml = tmp_path / "s.yaml"
    space_yaml.write_text("resolutions: [12]\nwidths: [0.5]\n")
    assert main(["latency", "check-table", "--space", str(space_yaml), str(ruled)]) in (0, 2)
    assert f"space {space_yaml}" in capsys.readouterr().out
    assert main(["latency", "check-table", str(tmp_path / "nope.json")]) == 2
    assert "not found" in capsys.readouterr().err


def test_predict_with_a_table_names_its_device_and_its_approximations(tmp_path, capsys):
    ruled = _space_table(tmp_path)
    arch = SearchSpace().sample(3).to_json()
    assert main(["latency", "predict", arch, "--latency", "table", "--latency-table", str(ruled), "--breakdown"]) == 0
    out = capsys.readouterr().out
    assert "predicted latency on board-x (table)" in out and "cpu-ort" not in out
    assert "s0.b0" in out and "default pool" in out and out.count("\ntotal") == 1
    assert "priced without their own table entry:" in out and "by a table default" in out
    assert main(["latency", "predict", arch, "--latency", "table", "--latency-table", str(ruled)]) == 0
    assert "--breakdown shows which" in capsys.readouterr().out
    bare = _space_table(tmp_path, rules=False, name="bare.json")
    assert main(["latency", "predict", arch, "--latency", "table", "--latency-table", str(bare)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "of this arch" in err and "check-table" in err


def test_import_cli(tmp_path, capsys):
    src = tmp_path / "lut.dict"
    src.write_text(json.dumps({"(16, 48, 8, 1, 1, 0, 1)-W4A8": {"latency": 0.5, "energy": 1.0},
                               "(48, 48, 8, 3, 2, 1, 48)-W4A8": {"latency": 0.25, "energy": 1.0},
                               "head": {"latency": 0.1, "energy": 1}, "tail": {"latency": 0.05, "energy": 1}}))
    out = tmp_path / "t.json"
    assert main(["latency", "import", "--format", "apq", str(src), "--out", str(out), "--device", "bitfusion"]) == 0
    text = capsys.readouterr().out
    assert "imported 2 entries" in text and "1 dwconv, 1 pwconv" in text and f"wrote {out}" in text
    t = load_table(out)
    assert t.target == "bitfusion" and t.defaults["stem"] == 0.1
    before = out.read_text()
    assert main(["latency", "import", "--format", "apq", str(src), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == before
    assert main(["latency", "import", "--format", "apq", str(src), "--out", str(out), "--overwrite"]) == 0
    capsys.readouterr()
    assert main(["latency", "import", "--format", "csv", str(src), "--out", str(tmp_path / "x.json")]) == 2
    assert "lacks column" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def test_search_refuses_an_incomplete_table_before_evaluating(tmp_path, capsys):
    bare = _space_table(tmp_path, rules=False, name="bare.json")
    run = tmp_path / "run"
    assert main(["search", "--latency", "table", "--latency-table", str(bare), "--accuracy", "zero-cost",
                 "--candidates", "2", "--batch", "2", "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot price" in err and "qnas latency check-table" in err
    assert not run.exists(), "nothing of the run is left"


def test_config_paths_are_absolute_and_resume_works_elsewhere(tmp_path, capsys, monkeypatch):
    from qnas.options import SearchConfig

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    _space_table(work)
    monkeypatch.chdir(work)
    flags = ["search", "--latency", "table", "--latency-table", "board.json", "--accuracy", "zero-cost",
             "--candidates", "2", "--batch", "2", "--out", "run", "--no-progress"]
    assert main(flags) == 0
    err = capsys.readouterr().err
    assert "by fallback rule" not in err, "--no-progress: quiet"
    stored = json.loads((work / "run" / "config.json").read_text())
    assert stored["latency_table"] == str(work / "board.json")
    # the same file given relatively is the same config: nothing reads as changed
    again = SearchConfig(latency_kind="table", latency_table="board.json", accuracy="zero-cost", n_candidates=2,
                         batch=2)
    assert again.latency_table == stored["latency_table"]
    assert again.to_dict() == {**stored, "space": None}
    history = (work / "run" / "history.jsonl").read_text()
    monkeypatch.chdir(elsewhere)
    assert main(["search", "--resume", str(work / "run"), "--no-progress"]) == 0
    assert "evaluated 2 archs" in capsys.readouterr().out
    assert (work / "run" / "history.jsonl").read_text() == history, "finished evaluations are not repeated"
