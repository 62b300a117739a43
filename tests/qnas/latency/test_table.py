"""Latency tables: file format, lookups, the table latency model, space key
enumeration, per-layer onnxruntime measurement, and the vectorised and
differentiable sum-of-table predictors."""
from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from qnas.errors import ArchError, LatencyTableError, QnasError
from qnas.latency import create_latency_model
from qnas.latency.base import inherit_weightless_bits
from qnas.latency.table import (COLUMNS, LatencyTable, TableLatencyModel, load_table, space_layer_keys)
from qnas.latency.vectorized import ArchDistribution, VectorizedTablePredictor
from qnas.quant.plan import LayerSpec
from qnas.space import SearchSpace, SpaceConfig, StageConfig


def synthetic_ms(layer: LayerSpec) -> float:
    """A deterministic, key-specific latency, so that every key (bits included) matters."""
    return 1e-3 + (zlib.crc32(repr(layer.key()).encode()) % 10_000) * 1e-5


@pytest.fixture(scope="module")
def space():
    return SearchSpace()


@pytest.fixture(scope="module")
def skip_space():
    # skips, several stem/head bit widths, stem/head activation bits not among the block ones
    return SearchSpace(SpaceConfig(allow_skip=True, a_bits=(8,), stem_head_w_bits=(4, 8), stem_head_a_bits=(4, 8),
                                   stages=(StageConfig(16, (1, 2, 3), 1), StageConfig(16, (2, 4), 1),
                                           StageConfig(24, (1, 3), 2))))


@pytest.fixture(scope="module")
def cpu_table(space):
    model = create_latency_model("cpu-ort")
    layers = space_layer_keys(space)
    return LatencyTable({l.key(): model.layer_ms(l) for l in layers}, meta={"device": "cpu-ort (analytic)"})


@pytest.fixture(scope="module")
def archs(space):
    return [space.sample(i) for i in range(200)]


def small_table() -> LatencyTable:
    layers = [LayerSpec("a", "pwconv", 16, 48, 8, 8, 1, 1, 1, 4, 8),
              LayerSpec("b", "dwconv", 48, 48, 8, 4, 5, 2, 48, 2, 4),
              LayerSpec("c", "add", 24, 24, 4, 4, w_bits=8, a_bits=8),
              LayerSpec("d", "fc", 64, 10, 1, 1, w_bits=8, a_bits=8)]
    return LatencyTable({l: 0.1 * (i + 1) / 3 for i, l in enumerate(layers)},
                        meta={"device": "test-cpu", "runtime": "none", "threads": 1, "notes": "unit test"})


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg
    return msg


# ---- file format ---------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_round_trip(tmp_path, suffix):
    t = small_table()
    path = t.save(tmp_path / f"t{suffix}")
    back = load_table(path)
    assert back == t and dict(back) == dict(t)  # exact floats
    assert back.meta == t.meta
    assert back.source == str(path)


def test_json_schema_and_csv_header(tmp_path):
    t = small_table()
    doc = json.loads(t.save(tmp_path / "t.json").read_text())
    assert doc["schema"] == "qnas-latency-table" and doc["version"] == 1
    assert set(doc["meta"]) >= {"device", "runtime", "threads", "created", "qnas_version", "notes"}
    assert all(set(e) == set(COLUMNS) for e in doc["entries"])
    lines = [l for l in t.save(tmp_path / "t.csv").read_text().splitlines() if not l.startswith("#")]
    assert lines[0] == "op,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms"


def test_user_csv_without_meta(tmp_path):
    p = tmp_path / "mine.csv"
    p.write_text("op,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms,comment\n"
                 "pwconv,16,48,8,1,1,1,8,8,0.05,measured on my board\n")
    t = load_table(p)
    assert t.lookup(("pwconv", 16, 48, 8, 1, 1, 1, 8, 8)) == 0.05
    assert t.meta["device"] is None


def test_missing_key_names_it():
    t = small_table()
    layer = LayerSpec("s1.b0.expand", "pwconv", 16, 96, 8, 8, 1, 1, 1, 2, 4)
    with pytest.raises(LatencyTableError) as e:
        t.lookup(layer)
    msg = one_line(e.value)
    assert "op='pwconv', cin=16, cout=96, hw=8" in msg and "w_bits=2, a_bits=4" in msg
    assert "s1.b0.expand" in msg and "qnas latency measure" in msg
    assert isinstance(e.value, QnasError)
    assert t.missing([layer, layer]) == [layer]


@pytest.mark.parametrize("name, text, fragment", [
    ("bad.json", '{"schema": "qnas-latency-table", "version": 1, "entries": [', "not valid JSON"),
    ("schema.json", '{"schema": "something-else", "version": 1, "entries": []}', "schema"),
    ("newer.json", '{"schema": "qnas-latency-table", "version": 99, "entries": []}', "upgrade qnas"),
    ("neg.json", '{"schema": "qnas-latency-table", "version": 1, "entries": [{"op": "fc", "cin": 8, "cout": 2, '
                 '"hw": 1, "k": 1, "stride": 1, "groups": 1, "w_bits": 8, "a_bits": 8, "ms": -1}]}', "ms=-1.0"),
    ("nan.json", '{"schema": "qnas-latency-table", "version": 1, "entries": [{"op": "fc", "cin": 8, "cout": 2, '
                 '"hw": 1, "k": 1, "stride": 1, "groups": 1, "w_bits": 8, "a_bits": 8, "ms": NaN}]}', "ms=nan"),
    ("field.json", '{"schema": "qnas-latency-table", "version": 1, "entries": [{"op": "fc", "cin": 8}]}', "lacks field"),
    ("op.json", '{"schema": "qnas-latency-table", "version": 1, "entries": [{"op": "lstm", "cin": 8, "cout": 2, '
                '"hw": 1, "k": 1, "stride": 1, "groups": 1, "w_bits": 8, "a_bits": 8, "ms": 1}]}', "lstm"),
    ("col.csv", "op,cin,cout,hw,k,stride,groups,w_bits,ms\nfc,8,2,1,1,1,1,8,0.1\n", "a_bits"),
    ("nan.csv", "op,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms\nfc,8,2,1,1,1,1,8,8,nan\n", "ms=nan"),
    ("int.csv", "op,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms\nfc,8.5,2,1,1,1,1,8,8,0.1\n", "cin"),
    ("empty.csv", "# nothing\n", "header"),
    ("dup.csv", "op,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms\nfc,8,2,1,1,1,1,8,8,0.1\nfc,8,2,1,1,1,1,8,8,0.2\n",
     "twice"),
    ("table.txt", "", "use a .json or .csv"),
])
def test_corrupt_files(tmp_path, name, text, fragment):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(LatencyTableError) as e:
        load_table(p)
    msg = one_line(e.value)
    assert name in msg and fragment in msg


def test_missing_file(tmp_path):
    with pytest.raises(LatencyTableError, match="not found"):
        load_table(tmp_path / "nope.json")


def test_save_refuses_overwrite(tmp_path):
    t = small_table()
    p = t.save(tmp_path / "t.json")
    before = p.read_text()
    bigger = t.with_entries({("fc", 8, 2, 1, 1, 1, 1, 8, 8): 1.0})
    with pytest.raises(LatencyTableError, match="already exists"):
        bigger.save(p)
    assert p.read_text() == before
    bigger.save(p, overwrite=True)
    assert len(load_table(p)) == len(t) + 1
    assert [f.name for f in tmp_path.iterdir()] == ["t.json"]  # no temp files left


def test_merge():
    a = small_table()
    key = next(iter(a))
    b = LatencyTable({key: 9.0, ("fc", 8, 2, 1, 1, 1, 1, 8, 8): 1.0}, meta={"device": "test-cpu"})
    m = a.merge(b)
    assert len(m) == len(a) + 1 and m[key] == 9.0
    assert a.merge(b, prefer="self")[key] == a[key]
    with pytest.raises(LatencyTableError, match="latency target 'other-board'"):
        a.merge(LatencyTable({}, meta={"device": "other-board"}))
    assert len(a.merge(LatencyTable({}, meta={"device": "other-board"}), allow_mixed_targets=True)) == len(a)


def test_invalid_entries_in_memory():
    with pytest.raises(LatencyTableError, match="finite"):
        LatencyTable({("fc", 8, 2, 1, 1, 1, 1, 8, 8): float("inf")})
    with pytest.raises(LatencyTableError, match="9-tuple"):
        LatencyTable({("fc", 8): 1.0})


# ---- table latency model -------------------------------------------------------------
def test_table_model_predicts_sum(space, archs, cpu_table, tmp_path):
    model = TableLatencyModel.from_file(cpu_table.save(tmp_path / "cpu.json"))
    assert model.target == "cpu-ort (analytic)" and model.kind == "table"
    for arch in archs[:10]:
        plan = space.plan(arch)
        layers = inherit_weightless_bits(plan.layers())
        assert model.predict(plan) == pytest.approx(sum(cpu_table.lookup(l) for l in layers), rel=1e-12)
        # add/pool are looked up at their consumer's bits, never at the float default
        assert all(l.a_bits != 32 for l in layers)
    assert model.predict_many([space.plan(a) for a in archs[:3]]).shape == (3,)


def test_space_layer_keys_cover_random_archs(space, archs):
    keys = space_layer_keys(space)
    assert len({l.key() for l in keys}) == len(keys)
    print(f"default SearchSpace(): {len(keys)} distinct layer keys")
    table = LatencyTable({l: 1.0 for l in keys})
    for arch in archs[:50]:
        assert table.missing(inherit_weightless_bits(space.plan(arch).layers())) == []
    sub = space_layer_keys(space, archs[:50])
    assert {l.key() for l in sub} <= {l.key() for l in keys}
    # the enumeration contains no key an arch can never use: weightless layers only at reachable bits
    assert all(l.a_bits in space.config.a_bits + space.config.stem_head_a_bits for l in keys)


def test_space_layer_keys_skip_space(skip_space):
    keys = {l.key() for l in space_layer_keys(skip_space)}
    rng = np.random.default_rng(0)
    for _ in range(100):  # raw gene vectors, skips at stage-first positions included
        vec = [int(rng.integers(0, b + 1)) for b in skip_space.bounds()]
        plan = skip_space.plan(skip_space.decode(vec))
        assert {l.key() for l in inherit_weightless_bits(plan.layers())} <= keys


# ---- per-layer measurement -----------------------------------------------------------
def test_layer_onnx_forms():
    onnx = pytest.importorskip("onnx")
    from qnas.latency.layer_measure import layer_onnx

    q8 = LayerSpec("s0.b0.expand", "pwconv", 8, 24, 6, 6, 1, 1, 1, 8, 8)
    ops = [n.op_type for n in layer_onnx(q8).graph.node]
    assert ops == ["QuantizeLinear", "DequantizeLinear", "Clip", "DequantizeLinear", "Conv",
                   "BatchNormalization", "Relu"]
    q4 = replace(q8, name="s0.b0.project", cin=24, cout=8, w_bits=4, a_bits=4)
    ops4 = [n.op_type for n in layer_onnx(q4).graph.node]
    assert ops4[:3] == ["QuantizeLinear", "Clip", "DequantizeLinear"] and ops4[-1] == "BatchNormalization"
    f32 = replace(q8, w_bits=32, a_bits=32)
    ops32 = [n.op_type for n in layer_onnx(f32).graph.node]
    assert "QuantizeLinear" not in ops32 and "DequantizeLinear" not in ops32 and "Conv" in ops32
    dw = LayerSpec("s1.b0.dw", "dwconv", 24, 24, 6, 3, 5, 2, 24, 2, 8)
    conv = [n for n in layer_onnx(dw).graph.node if n.op_type == "Conv"][0]
    assert {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}["group"] == 24
    fc = LayerSpec("head", "fc", 32, 10, 1, 1, w_bits=8, a_bits=8)
    assert [n.op_type for n in layer_onnx(fc).graph.node][-1] == "Gemm"
    for l in (q8, q4, f32, dw, fc):
        onnx.checker.check_model(layer_onnx(l))
    with pytest.raises(LatencyTableError, match="12"):
        layer_onnx(replace(q8, w_bits=12))


def test_measure_layers():
    pytest.importorskip("onnxruntime")
    from qnas.latency.layer_measure import measure_layers

    layers = [LayerSpec("s0.b0.expand", "pwconv", 8, 24, 6, 6, 1, 1, 1, 8, 8),
              LayerSpec("s1.b0.dw", "dwconv", 24, 24, 6, 3, 5, 2, 24, 2, 4),
              LayerSpec("s0.b0.add", "add", 8, 8, 6, 6, w_bits=8, a_bits=8),
              LayerSpec("pool", "pool", 32, 32, 2, 1, w_bits=8, a_bits=8),
              LayerSpec("head", "fc", 32, 10, 1, 1, w_bits=32, a_bits=32)]
    t0 = time.perf_counter()
    table = measure_layers(layers + layers[:1], warmup=2, repeats=5, progress=False)
    dt = time.perf_counter() - t0
    print(f"measure_layers: {len(layers) / dt:.0f} layers/s")
    assert len(table) == len(layers)
    assert all(math.isfinite(v) and v > 0 for v in table.values())
    assert table.meta["threads"] == 1 and "onnxruntime" in table.meta["runtime"]


# ---- vectorised and differentiable predictors -------------------------------------------
def test_vectorized_equals_table_sum(space, archs, cpu_table):
    pred = VectorizedTablePredictor.from_table(space, cpu_table)
    ref = TableLatencyModel(cpu_table).predict_many([space.plan(a) for a in archs])
    X = np.asarray([space.encode(a) for a in archs])
    np.testing.assert_allclose(pred.predict_encoded(X), ref, rtol=1e-9, atol=0)
    assert pred.predict(archs[0]) == pytest.approx(ref[0], rel=1e-12)


def test_vectorized_skip_space_raw_genes(skip_space):
    pred = VectorizedTablePredictor(skip_space, synthetic_ms)
    model = TableLatencyModel(LatencyTable({l: synthetic_ms(l) for l in space_layer_keys(skip_space)}))
    rng = np.random.default_rng(1)
    G = np.stack([rng.integers(0, b + 1, 200) for b in skip_space.bounds()], axis=1)
    ref = model.predict_many([skip_space.plan(skip_space.decode(g)) for g in G])
    np.testing.assert_allclose(pred.predict_encoded(G), ref, rtol=1e-9, atol=0)
    with pytest.raises(ArchError):
        pred.predict_encoded(G[:, :-1])
    bad = G[:2].copy()
    bad[0, 0] = 99
    with pytest.raises(ArchError, match="gene 0"):
        pred.predict_encoded(bad)


def test_vectorized_missing_key_raises(space, cpu_table):
    key = next(l.key() for l in space_layer_keys(space) if l.op == "dwconv" and l.k == 7)
    holed = LatencyTable({k: v for k, v in cpu_table.items() if k != key})
    with pytest.raises(LatencyTableError) as e:
        VectorizedTablePredictor(space, holed.lookup)
    assert "op='dwconv'" in one_line(e.value) and "k=7" in str(e.value)
    with pytest.raises(LatencyTableError, match="qnas latency measure"):
        VectorizedTablePredictor(space, lambda l: {}[l.key()])  # any KeyError becomes the table error


def test_expected_latency_one_hot_is_exact(space, archs, cpu_table):
    pred = VectorizedTablePredictor(space, cpu_table.lookup)
    model = TableLatencyModel(cpu_table)
    for arch in archs[:5]:
        e = pred.expected_latency(ArchDistribution.one_hot(space, arch))
        assert e.item() == pytest.approx(model.predict(space.plan(arch)), rel=1e-9)


def test_expected_latency_gradients(space, cpu_table):
    pred = VectorizedTablePredictor(space, cpu_table.lookup)
    probs = ArchDistribution.uniform(space, requires_grad=True)
    e = pred.expected_latency(probs)
    e.backward()
    for t in probs.tensors():
        assert t.grad is not None and torch.all(t.grad != 0)
    # through logits too, in float32
    logits = ArchDistribution.zeros_logits(space, dtype=torch.float32)
    pred.expected_latency(logits.softmax()).backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in logits.tensors())
    assert logits.width.grad.abs().sum() > 0


def test_expected_latency_matches_monte_carlo(skip_space):
    """Under a random factorised distribution, Σ p·table equals the mean latency of sampled archs."""
    pred = VectorizedTablePredictor(skip_space, synthetic_ms)
    gen = torch.Generator().manual_seed(0)
    dist = ArchDistribution.zeros_logits(skip_space, requires_grad=False).map(
        lambda t: torch.randn(t.shape, generator=gen, dtype=t.dtype) * 1.5).softmax()
    exact = pred.expected_latency(dist).item()
    samples = pred.predict_encoded(dist.sample_genes(100_000, rng=0))
    stderr = samples.std() / math.sqrt(len(samples))
    assert abs(samples.mean() - exact) < 5 * stderr


def test_arch_distribution_shape_check(space, cpu_table):
    pred = VectorizedTablePredictor(space, cpu_table.lookup)
    d = ArchDistribution.uniform(space)
    d.op[0] = d.op[0][:, :2]
    with pytest.raises(ArchError, match=r"op\[0\]"):
        pred.expected_latency(d)
