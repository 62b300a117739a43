"""The default latency kind ``auto``: this machine's measured table on cpu-ort, cached per machine."""
import json

import pytest

from qnas.arch import Arch
from qnas.errors import ConfigError, LatencyTableError
from qnas.latency import create_latency_model, load_table
from qnas.latency.machine_cache import AUTO_ENV, CACHE_ENV, machine_table_path, resolve_latency_kind
from qnas.latency.measured import MeasuredLatencyModel, space_fingerprint
from qnas.latency.table import plan_layer_keys, space_layer_keys
from qnas.options import SearchConfig
from qnas.space import SearchSpace

# small enough to time every layer key it can produce in a second or two
TINY = SearchSpace.from_dict({"resolutions": [12], "widths": [0.5], "kernels": [3], "expands": [3],
                              "w_bits": [4, 8], "a_bits": [8], "stages": [{"channels": 16, "depths": [1, 2]},
                                                                         {"channels": 24, "depths": [1], "stride": 2}]})
FAST = dict(repeats=3, warmup=1, passes=1)


@pytest.fixture
def measured_default(monkeypatch, tmp_path):
    """``auto`` as a user gets it (the tests' conftest pins it to analytic), cache in tmp_path."""
    monkeypatch.setenv(AUTO_ENV, "measured")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_auto_means_measured_on_the_host_target_only(measured_default):
    assert resolve_latency_kind("auto", "cpu-ort") == "measured"
    assert resolve_latency_kind("auto", "edgetpu") == "analytic"
    assert resolve_latency_kind("auto", "cpu-ort", table="t.json") == "table"
    assert resolve_latency_kind("auto", "edgetpu", table="t.json", hybrid="h.json") == "hybrid"
    assert resolve_latency_kind("analytic", "cpu-ort") == "analytic"  # an explicit kind is kept
    assert create_latency_model("cpu-ort", kind="auto").kind == "measured"
    assert create_latency_model("hexagon-htp", kind="auto").kind == "analytic"


def test_auto_can_be_pinned_to_analytic_and_refuses_nonsense(monkeypatch):
    monkeypatch.setenv(AUTO_ENV, "analytic")
    assert resolve_latency_kind("auto", "cpu-ort") == "analytic"
    monkeypatch.setenv(AUTO_ENV, "psychic")
    with pytest.raises(ConfigError, match=f"{AUTO_ENV}='psychic'.*'measured' or 'analytic'"):
        resolve_latency_kind("auto", "cpu-ort")


def test_search_config_records_what_auto_resolved_to(measured_default):
    assert SearchConfig().latency_kind == "auto"
    assert SearchConfig().validate().latency_kind == "measured"
    assert SearchConfig(target="edgetpu").validate().latency_kind == "analytic"
    with pytest.raises(ConfigError, match="unknown latency model kind 'psychic'"):
        SearchConfig(latency_kind="psychic").validate()


def test_cache_path_is_keyed_by_machine_runtime_and_threads(measured_default):
    import onnxruntime as ort

    one, four = machine_table_path(1), machine_table_path(4)
    assert one.parent == measured_default / "latency" and one.suffix == ".json"
    assert f"ort{ort.__version__}" in one.name and one.name.endswith("-t1.json") and four.name.endswith("-t4.json")


def test_default_model_grows_and_reuses_the_machine_cache(measured_default):
    plan = TINY.plan(TINY.sample(0))
    first = create_latency_model("cpu-ort", kind="auto", **FAST)
    ms = first.predict(plan)
    path = machine_table_path(1)
    assert ms > 0 and path.is_file()
    n = len(load_table(path))
    second = create_latency_model("cpu-ort", kind="auto", **FAST)
    assert second.ensure(plan.layers()) == 0, "a cached layer is not timed again"
    assert second.predict(plan) == pytest.approx(ms)
    assert len(load_table(path)) == n


def test_two_processes_growing_one_cache_keep_both_sets(tmp_path):
    cache = tmp_path / "c.json"
    a, b = MeasuredLatencyModel(cache=cache, **FAST), MeasuredLatencyModel(cache=cache, **FAST)
    la, lb = (plan_layer_keys([TINY.plan(TINY.sample(i))]) for i in (0, 1))  # add/pool with inherited bits
    a.ensure(la)
    b.ensure(lb)  # b read the cache before a wrote it: it must not drop a's entries
    on_disk = load_table(cache)
    assert not on_disk.missing(la) and not on_disk.missing(lb)


def test_a_corrupt_cache_is_refused_with_the_fix(tmp_path):
    cache = tmp_path / "c.json"
    cache.write_text("{not json")
    with pytest.raises(LatencyTableError, match="delete it"):
        MeasuredLatencyModel(cache=cache)
    assert cache.read_text() == "{not json", "the file is left as it was"


def test_prepare_times_the_whole_space_once(tmp_path):
    m = MeasuredLatencyModel(cache=tmp_path / "c.json", **FAST)
    lines = []
    keys = space_layer_keys(TINY)
    assert m.prepare(TINY, max_keys=len(keys) - 1) == 0, "too many keys: left to on-demand timing"
    assert m.prepare(TINY, log=lines.append) == len(keys)
    assert len(lines) == 1 and f"timing {len(keys)} layers" in lines[0]
    assert not m.table.missing(keys)
    assert m.prepare(TINY) == 0
    vec = m.vectorized(TINY)  # needs every key: present now
    arch = TINY.sample(3)
    assert float(vec.predict_archs([arch])[0]) == pytest.approx(m.predict(TINY.plan(arch)), rel=1e-6)


def test_a_search_run_keeps_the_table_its_latencies_came_from(measured_default, tmp_path):
    from qnas.searching import search

    run = tmp_path / "run"
    result = search(space=TINY, out=run, n_candidates=2, batch=2, epochs=1, threads=1, progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["latency_kind"] == "measured"
    table = load_table(run / "latency_table.json")
    assert not table.missing(space_layer_keys(TINY)), "the whole space was timed up front"
    model = MeasuredLatencyModel(table)
    offset = model.calibrate(TINY)  # the run's copy carries the space's calibrated offset: read, not measured
    assert offset == table.meta["whole_model_offsets_ms"][space_fingerprint(TINY)]["ms"]
    for r in result.records:
        arch = Arch.from_dict(r["arch"])
        assert r["latency_ms"] == pytest.approx(model.predict(TINY.plan(arch)), rel=1e-4, abs=1e-5)


def test_calibrated_offset_is_charged_once_per_network_and_cached(tmp_path):
    cache = tmp_path / "c.json"
    m = MeasuredLatencyModel(cache=cache, **FAST)
    arch = TINY.sample(2)
    plan = TINY.plan(arch)
    before = m.predict(plan)
    offset = m.calibrate(TINY, n=4)
    assert offset == m.offset_ms and abs(offset) < 10
    pool = next(c.ms for c in MeasuredLatencyModel.__mro__[1].breakdown(m, plan) if c.layer.op == "pool")
    expected = before - pool + max(pool + offset, 0.0)  # charged to the pool layer, never below 0
    assert m.predict(plan) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    costs = m.breakdown(plan)
    assert sum("whole-model offset" in c.note for c in costs) == (1 if offset else 0)
    vec = m.vectorized(TINY)  # the vectorised form charges it too (to the pool layer)
    assert float(vec.predict_archs([arch])[0]) == pytest.approx(m.predict(plan), rel=1e-6)
    # kept in the cache, per space: a new model reads it back without timing anything
    again = MeasuredLatencyModel(cache=cache, **FAST)
    import qnas.latency.model_measure as mm

    def no_timing(*a, **k):
        raise AssertionError("a cached offset is not measured again")

    orig, mm.measure_archs = mm.measure_archs, no_timing
    try:
        assert again.calibrate(TINY, n=4) == pytest.approx(offset)
    finally:
        mm.measure_archs = orig
    assert again.predict(plan) == pytest.approx(m.predict(plan))


def test_an_unwritable_cache_warns_and_keeps_the_timings_in_memory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    m = MeasuredLatencyModel(cache=blocker / "latency" / "c.json", **FAST)
    plan = TINY.plan(TINY.sample(0))
    with pytest.warns(UserWarning, match="QNAS_CACHE_DIR"):
        ms = m.predict(plan)
    assert ms > 0 and m.cache is None and not m.table.missing(plan_layer_keys([plan]))
    assert blocker.read_text() == "not a folder"
