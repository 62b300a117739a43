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
    assert "already exists" in capsys.readouterr().err
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
