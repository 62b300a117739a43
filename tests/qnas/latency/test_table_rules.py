"""A table as a user brings it: defaults and fallback rules, coverage of a space or an arch, the
breakdown that says what they priced, and files that carry them (JSON and CSV, still version 1)."""
from __future__ import annotations

import json

import pytest

from qnas.errors import LatencyTableError, QnasError
from qnas.latency import create_latency_model
from qnas.latency.base import LayerCost, inherit_weightless_bits
from qnas.latency.hybrid import HybridLatencyModel
from qnas.latency.measured import MeasuredLatencyModel
from qnas.latency.report import approximation_counts, format_breakdown
from qnas.latency.table import (FallbackRule, LatencyTable, TableLatencyModel, check_plan_coverage,
                                check_space_coverage, load_table, space_layer_keys, table_of)
from qnas.latency.vectorized import VectorizedTablePredictor
from qnas.quant.plan import LayerSpec
from qnas.space import SearchSpace

PW8 = ("pwconv", 16, 48, 8, 1, 1, 1, 8, 8)
PW4 = ("pwconv", 16, 48, 8, 1, 1, 1, 8, 4)
PW2 = ("pwconv", 16, 48, 8, 1, 1, 1, 8, 2)


@pytest.fixture(scope="module")
def space():
    return SearchSpace()


@pytest.fixture(scope="module")
def full(space):
    """Every key of the default space, priced by the analytic cpu-ort model."""
    model = create_latency_model("cpu-ort")
    return {l.key(): model.layer_ms(l) for l in space_layer_keys(space)}


def partial_table(full, **rules) -> LatencyTable:
    """The space's table without its A4 entries, the pool, the adds and the stem -- what published tables lack."""
    kept = {k: v for k, v in full.items() if k[8] != 4 and k[0] not in ("add", "pool") and k[1] != 1}
    return LatencyTable(kept, meta={"device": "board-x"}, **rules)


RULES = dict(defaults={"stem": 0.02, "pool": 0.001, "add": 0.0005}, fallbacks=[{"a_bits": 4, "use_a_bits": 8}])


# ---- pricing ------------------------------------------------------------------------------------
def test_entry_then_fallback_then_default():
    t = LatencyTable({PW8: 0.3}, defaults={"pwconv": 9.0, "pool": 0.01},
                     fallbacks=[{"a_bits": 4, "use_a_bits": 8, "scale": 0.5}])
    assert t.lookup(PW8) == 0.3 and t.price(PW8).how == "entry"
    p = t.price(PW4)
    assert p.how == "fallback" and p.ms == pytest.approx(0.15) and p.priced_key == PW8
    assert p.note == "fallback a_bits=4 -> a_bits=8 x0.5"
    assert t.price(PW2).how == "default" and t.lookup(PW2) == 9.0  # no rule for A2: the op default
    assert t.lookup(("pool", 48, 48, 4, 1, 1, 1, 8, 8)) == 0.01
    assert PW4 not in t and len(t) == 1, "as a mapping the table holds its entries only"
    assert t.missing([PW4]) == [PW4] and t.unpriced([PW4, PW2]) == []


def test_fallback_chains_shortest_first_and_stops():
    t = LatencyTable({PW8: 1.0, ("pwconv", 16, 48, 8, 1, 1, 1, 8, 6): 0.5},
                     fallbacks=[{"a_bits": 2, "use_a_bits": 4}, {"a_bits": 4, "use_a_bits": 8},
                                {"a_bits": 4, "use_a_bits": 6}])
    assert t.lookup(PW4) == 1.0, "rules are tried in file order"
    p = t.price(PW2)  # A2 -> A4 (no entry) -> A8
    assert p.ms == 1.0 and p.note == "fallback a_bits=2 -> a_bits=4; a_bits=4 -> a_bits=8"
    loop = LatencyTable({}, fallbacks=[{"a_bits": 4, "use_a_bits": 8}, {"a_bits": 8, "use_a_bits": 4}])
    assert loop.price(PW4) is None  # a cycle ends, it does not hang


def test_role_defaults_need_the_layer_name():
    stem = LayerSpec("stem", "conv", 1, 16, 16, 8, 3, 2, 1, 8, 8)
    t = LatencyTable({}, defaults={"stem": 0.2, "conv": 0.7})
    assert t.lookup(stem) == 0.2 and t.price(stem).note == "default stem"
    assert t.lookup(stem.key()) == 0.7, "a bare key has no role: the op default"
    assert t.lookup(LayerSpec("s0.b0.x", "conv", 1, 16, 16, 8, 3, 2, 1, 8, 8)) == 0.7


def test_missing_key_error_mentions_rules():
    t = LatencyTable({PW8: 1.0}, fallbacks=[{"w_bits": 4, "use_w_bits": 8}])
    with pytest.raises(LatencyTableError) as e:
        t.lookup(LayerSpec("s1.b0.expand", "pwconv", 16, 48, 8, 8, 1, 1, 1, 8, 4))
    msg = str(e.value)
    assert "\n" not in msg and "no entry, fallback rule or default" in msg and "s1.b0.expand" in msg


@pytest.mark.parametrize("kw, fragment", [
    (dict(defaults={"stemm": 1.0}), "names no layer role or op"),
    (dict(defaults={"pool": -1}), "finite and >= 0"),
    (dict(defaults=[1]), "defaults must be an object"),
    (dict(fallbacks=[{"a_bits": 4}]), "no use_<field>"),
    (dict(fallbacks=[{"a_bit": 4, "use_a_bits": 8}]), "unknown field"),
    (dict(fallbacks=[{"a_bits": "four", "use_a_bits": 8}]), "not an integer"),
    (dict(fallbacks=[{"op": "lstm", "use_a_bits": 8}]), "lstm"),
    (dict(fallbacks=[{"a_bits": 4, "use_a_bits": 8, "scale": 0}]), "scale"),
    (dict(fallbacks={"a_bits": 4}), "list of rules"),
])
def test_bad_rules_are_one_line_errors(kw, fragment):
    with pytest.raises(LatencyTableError, match=fragment) as e:
        LatencyTable({PW8: 1.0}, **kw)
    assert "\n" not in str(e.value) and isinstance(e.value, QnasError)


# ---- files --------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_rules_round_trip_and_plain_files_unchanged(tmp_path, suffix):
    t = LatencyTable({PW8: 0.25}, meta={"device": "board-x"}, defaults={"pool": 0.001},
                     fallbacks=[{"a_bits": 4, "use_a_bits": 8, "note": "A4 runs as A8 here"}])
    back = load_table(t.save(tmp_path / f"t{suffix}"))
    assert back == t and back.lookup(PW4) == 0.25 and back.fallbacks[0].note == "A4 runs as A8 here"
    plain = LatencyTable({PW8: 0.25})
    text = plain.save(tmp_path / f"plain{suffix}").read_text()
    assert "defaults" not in text and "fallbacks" not in text, "a table without rules is written as before"
    if suffix == ".json":
        doc = json.loads((tmp_path / "t.json").read_text())
        assert doc["version"] == 1 and doc["defaults"] == {"pool": 0.001}


def test_hand_written_json_with_rules(tmp_path):
    p = tmp_path / "mine.json"
    p.write_text(json.dumps({"schema": "qnas-latency-table", "version": 1, "meta": {"device": "npu-7"},
                             "defaults": {"add": 0.0005}, "fallbacks": [{"op": "pwconv", "use_w_bits": 8}],
                             "entries": [dict(zip(("op", "cin", "cout", "hw", "k", "stride", "groups", "w_bits",
                                                   "a_bits", "ms"), PW8 + (0.4,)))]}))
    t = load_table(p)
    assert t.lookup(("pwconv", 16, 48, 8, 1, 1, 1, 2, 8)) == 0.4
    assert t.lookup(("add", 8, 8, 4, 1, 1, 1, 8, 8)) == 0.0005
    p.write_text(p.read_text().replace('"fallbacks": [', '"fallbacks": {"x": ').replace("}]", "}}", 1))
    with pytest.raises(LatencyTableError):
        load_table(p)
    c = tmp_path / "bad.csv"
    c.write_text("# defaults: [1]\nop,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms\n")
    with pytest.raises(LatencyTableError, match="JSON object"):
        load_table(c)


def test_merge_and_with_rules_keep_rules():
    a = LatencyTable({PW8: 1.0}, defaults={"pool": 0.1})
    b = LatencyTable({PW2: 2.0}, defaults={"pool": 0.2, "add": 0.3}, fallbacks=[{"a_bits": 4, "use_a_bits": 8}])
    m = a.merge(b)
    assert m.defaults == {"pool": 0.2, "add": 0.3} and m.lookup(PW4) == 1.0
    assert a.merge(b, prefer="self").defaults["pool"] == 0.1
    r = a.with_rules(fallbacks=[{"a_bits": 4, "use_a_bits": 8}])
    assert r.lookup(PW4) == 1.0 and r.defaults == a.defaults
    assert not r.with_rules(replace=True).has_rules
    assert a.with_entries({PW2: 3.0}).defaults == a.defaults
    assert FallbackRule.from_dict({"use_a_bits": 32}).describe() == "any -> a_bits=32"


# ---- coverage -----------------------------------------------------------------------------------
def test_space_coverage_lists_every_missing_key(space, full):
    bare = partial_table(full)
    cov = bare.coverage(space_layer_keys(space))
    missing = {l.key() for l in cov.missing}
    assert missing == {k for k in full if k not in bare}, "every key the table lacks, each once"
    assert cov.n_keys == len(full) and not cov.complete and cov.by_entry == len(bare)
    lines = cov.missing_lines(5)
    assert len(lines) == 6 and lines[-1] == f"  ... and {len(missing) - 5} more" and "e.g. layer" in lines[0]
    assert len(cov.missing_lines(0)) == len(missing)
    with pytest.raises(LatencyTableError) as e:
        check_space_coverage(TableLatencyModel(bare), space)
    msg = str(e.value)
    assert "\n" not in msg and f"cannot price {len(missing)} of the {len(full)}" in msg
    assert "qnas latency check-table" in msg


def test_rules_complete_the_space_and_are_said(space, full):
    ruled = partial_table(full, **RULES)
    said = []
    cov = check_space_coverage(TableLatencyModel(ruled), space, log=said.append)
    assert cov.complete and cov.by_fallback and cov.by_default
    assert len(said) == 1 and "by fallback rule" in said[0] and "by default" in said[0]
    counts = cov.rule_counts()
    assert counts["fallback a_bits=4 -> a_bits=8"] == len(cov.by_fallback) and "default pool" in counts
    assert check_space_coverage(create_latency_model("cpu-ort"), space) is None, "no table: nothing to check"


def test_hybrid_and_measured_models(space, full, tmp_path):
    bare = TableLatencyModel(partial_table(full))
    hybrid = HybridLatencyModel(bare, space)
    assert table_of(hybrid) is bare.table
    with pytest.raises(LatencyTableError, match="cannot price"):
        check_space_coverage(hybrid, space)
    measured = MeasuredLatencyModel(partial_table(full))
    assert table_of(measured) is None and check_space_coverage(measured, space) is None, "it measures what it lacks"


def test_plan_coverage_is_the_arch_only(space, full):
    ruled = partial_table(full, **RULES)
    plan = space.plan(space.sample(3))
    assert check_plan_coverage(TableLatencyModel(ruled), plan).complete
    only = LatencyTable({l.key(): 0.1 for l in inherit_weightless_bits(plan.layers())})
    assert check_plan_coverage(TableLatencyModel(only), plan).complete, "keys of other archs do not matter"
    layers = inherit_weightless_bits(plan.layers())
    short = LatencyTable({l.key(): 0.1 for l in layers[1:]})
    with pytest.raises(LatencyTableError, match="this arch"):
        check_plan_coverage(TableLatencyModel(short), plan)


# ---- predictions -------------------------------------------------------------------------------
def test_breakdown_notes_and_sums(space, full):
    model = TableLatencyModel(partial_table(full, **RULES))
    vec = VectorizedTablePredictor(space, model.layer_ms)
    for arch in [space.sample(i) for i in range(20)]:
        plan = space.plan(arch)
        costs = model.breakdown(plan)
        assert all(isinstance(c, LayerCost) for c in costs)
        assert model.predict(plan) == pytest.approx(sum(c.ms for c in costs), rel=1e-12)
        assert vec.predict(arch) == pytest.approx(model.predict(plan), rel=1e-9), "vectorized prices the same"
        for c in costs:
            l = c.layer
            if l.a_bits == 4 and l.op not in ("add", "pool") and l.name != "stem":
                assert c.note == "fallback a_bits=4 -> a_bits=8" and c.a_bits == 8 and not c.native
            if l.op in ("add", "pool") or l.name == "stem":
                assert c.note.startswith("default") and c.ms in (0.02, 0.001, 0.0005)
        counts = approximation_counts(costs)
        assert counts.get("default", 0) >= 2  # stem and pool at least
        text = model.describe(plan)
        assert "default pool" in text and text.splitlines()[-1].startswith("total")
    assert model.target == "board-x"


def test_every_model_has_a_breakdown_text(space):
    plan = space.plan(space.sample(1))
    for model in (create_latency_model("cpu-ort"), TableLatencyModel(LatencyTable(
            {l.key(): 0.1 for l in inherit_weightless_bits(plan.layers())}))):
        text = model.describe(plan)
        assert "s0.b0" in text
    costs = TableLatencyModel(LatencyTable({l.key(): 0.1 for l in inherit_weightless_bits(plan.layers())})
                              ).breakdown(plan)
    assert "total" in format_breakdown(costs) and approximation_counts(costs) == {}
