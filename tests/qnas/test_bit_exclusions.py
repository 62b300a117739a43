"""Space exclude rules on bit widths: ``{kernel: 7, layer: dw, w_bits: 2}`` and the like (issue 13, item 5).

A published table often lacks some (kernel, bits) pairs; the space must be able to leave exactly
those out, and everything that reads the space (decode, sampling, validation, the layer keys a
table must cover, the vectorised and differentiable latency predictors, a search) must agree."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qnas import presets
from qnas.arch import Arch, Block
from qnas.errors import ArchError, ConfigError, LatencyTableError
from qnas.latency.base import as_layers, inherit_weightless_bits
from qnas.latency.table import LatencyTable, check_space_coverage, space_layer_keys
from qnas.latency.vectorized import ArchDistribution, VectorizedTablePredictor
from qnas.space import SearchSpace

RULES = [{"kernel": 7, "layer": "dw", "w_bits": 2},  # a (kernel, bits) pair on one conv
         {"stage": 1, "w_bits": 2, "a_bits": 4},  # a (w, a) pair on every conv of a stage
         {"stage": 2, "layer": "expand", "a_bits": 4}]  # an activation width: the add before it inherits it


def _space(rules=RULES, base: dict | None = None) -> SearchSpace:
    d = base if base is not None else SearchSpace().to_dict()
    d["exclude"] = rules
    return SearchSpace.from_dict(d)


def _excluded(space: SearchSpace, arch: Arch) -> list[str]:
    out = []
    for si, blocks in enumerate(arch.stages):
        for b in blocks:
            if b.is_skip:
                continue
            for name, w, a in zip(("expand", "dw", "project"), b.w_bits, b.a_bits):
                if name == "expand" and not space.has_expand_conv(b.expand):
                    continue
                if any(r.excludes_bits(si, b.kernel, b.expand, name, w, a) for r in space.config.exclude):
                    out.append(f"s{si} k{b.kernel} {name} W{w}A{a}")
    return out


def _random_genes(space: SearchSpace, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, np.asarray(space.bounds()) + 1, size=(n, len(space.bounds())))


def _fake_ms(layer) -> float:  # a distinct, deterministic cost per key
    return (abs(hash(layer.key())) % 997 + 1) / 1000.0


def test_rules_parse_round_trip_and_refuse_nonsense():
    sp = _space()
    assert SearchSpace.from_dict(sp.to_dict()).config.exclude == sp.config.exclude
    assert sp.stage_ops == SearchSpace().stage_ops  # bit rules keep every op
    for bad, msg in [({"layer": "dw"}, "no w_bits/a_bits"), ({"layer": "fc", "w_bits": 2}, "layer must be one of"),
                     ({"w_bits": 3}, "w_bits=3 is not one of"), ({"a_bits": 2}, "a_bits=2 is not one of"),
                     ({"bits": 2}, "exclude")]:
        with pytest.raises(ConfigError, match=msg):
            _space([bad])
    with pytest.raises(ConfigError, match="no .w_bits, a_bits. pair"):
        _space([{"layer": "dw", "w_bits": w} for w in (2, 4, 8)])


def test_every_gene_vector_decodes_to_an_allowed_arch_and_validate_refuses_excluded_bits():
    sp = _space()
    X = _random_genes(sp, 400)
    for x in X:
        arch = sp.decode(x)
        assert _excluded(sp, arch) == [] and sp.validate(arch) is arch
    # without the rules, many of the same vectors would hold an excluded pair
    assert sum(bool(_excluded(sp, SearchSpace().decode(x))) for x in X) > 100
    rng = np.random.default_rng(1)
    for _ in range(50):
        assert _excluded(sp, sp.sample(rng)) == []
    stage0 = (Block(7, 3, (8, 2, 8), (8, 8, 8)),)
    rest = SearchSpace().uniform().stages[1:]
    bad = Arch(16, 1.0, (stage0,) + rest)
    with pytest.raises(ArchError, match=r"dw conv at W2A8, which the space excludes \(\{kernel: 7, layer: dw, w_bits: 2\}\)"):
        sp.validate(bad)


def test_excluded_pair_decodes_to_the_nearest_wider_pair():
    sp = _space()
    layout = sp.genes
    w, a = list(sp.config.w_bits), list(sp.config.a_bits)
    k7 = [o for o, (k, _) in enumerate(sp.stage_ops[0]) if k == 7][0]
    rep = layout.bit_repair[0]
    # a 7x7 depthwise at W2 goes to W4 at the same activation width (never lower)
    assert tuple(rep[k7, 1, w.index(2), a.index(4)]) == (w.index(4), a.index(4))
    # stage 1, W2A4 anywhere: W4A4 (2 bits away) rather than W2A8 (4 bits away)
    assert tuple(layout.bit_repair[1][0, 2, w.index(2), a.index(4)]) == (w.index(4), a.index(4))
    # stage 2's expand conv at A4: A8
    assert tuple(layout.bit_repair[2][0, 0, w.index(2), a.index(4)]) == (w.index(2), a.index(8))
    # stage 3's 3x3 ops: no rule applies, every pair decodes to itself
    k3 = [o for o, (k, _) in enumerate(sp.stage_ops[3]) if k == 3]
    ident = np.stack(np.meshgrid(np.arange(len(w)), np.arange(len(a)), indexing="ij"), axis=-1)
    assert all((layout.bit_repair[3][o] == ident).all() for o in k3)


@pytest.mark.parametrize("preset", [None, "ofa-mbv3"])
def test_canonical_and_vectorised_latency_agree_with_decoding(preset):
    base = presets.preset_dict(preset) if preset else None
    rules = RULES if preset is None else [{"kernel": 7, "layer": "dw", "w_bits": 2},
                                          {"stage": 3, "layer": "project", "a_bits": 4}]
    sp = _space(rules, base)
    X = _random_genes(sp, 300)
    assert (sp.genes.canonical_matrix(X) == np.asarray([sp.canonical(x) for x in X])).all()
    keys = {l.key() for l in space_layer_keys(sp)}
    assert len(keys) < len({l.key() for l in space_layer_keys(_space([], base))})

    def ms(layer):
        assert layer.key() in keys, f"priced a key the space cannot produce: {layer.key()}"
        return _fake_ms(layer)

    pred = VectorizedTablePredictor(sp, ms)
    ref = np.asarray([sum(ms(l) for l in inherit_weightless_bits(as_layers(sp.plan(sp.decode(x))))) for x in X])
    assert np.allclose(pred.predict_encoded(X), ref, rtol=1e-9, atol=1e-9)
    # a one-hot distribution on the raw (unrepaired) genes prices the arch that would be built
    # (exact here: no rule moves the activation width a residual add inherits)
    if preset is None:
        return
    for i, x in enumerate(X[:25]):
        e = float(pred.expected_latency(ArchDistribution.one_hot(sp, x, dtype=torch.float64)))
        assert e == pytest.approx(ref[i], rel=1e-9)


def test_a_table_without_the_excluded_keys_covers_the_restricted_space(tmp_path):
    from qnas.searching import search

    sp = _space()
    full = SearchSpace.from_dict(SearchSpace().to_dict())
    table = LatencyTable({l.key(): _fake_ms(l) for l in space_layer_keys(sp)}, meta={"device": "partial-table"})
    from qnas.latency.table import TableLatencyModel

    model = TableLatencyModel(table)
    assert check_space_coverage(model, sp) is not None
    with pytest.raises(LatencyTableError, match="cannot price"):
        check_space_coverage(model, full)
    path = table.save(tmp_path / "t.json")
    for strategy in ("nsga2", "random"):
        result = search(space=sp, latency_table=str(path), strategy=strategy, n_candidates=8, accuracy="zero-cost",
                        progress=False, out=tmp_path / strategy)
        assert result.target == "partial-table" and len(result.records) == 8
        for r in result.records:
            arch = Arch.from_dict(r["arch"])
            assert _excluded(sp, arch) == []
            assert r["latency_ms"] == pytest.approx(model.predict(sp.plan(arch)), rel=1e-6)


def test_differentiable_search_derives_an_allowed_arch_within_budget(digits_splits):
    from qnas.searching import make_latency_model
    from qnas.strategies import Budget, StrategyContext, create_strategy

    sp = _space()
    cpu_ort = make_latency_model("cpu-ort", "analytic", space=sp)
    lat = sorted(cpu_ort.predict(sp.plan(sp.sample(i))) for i in range(100))
    budget = Budget(latency_ms=lat[40])
    ctx = StrategyContext(splits=digits_splits, latency=cpu_ort)
    archs = create_strategy("differentiable", sp, seed=0, context=ctx, budget=budget, epochs=2, warmup_epochs=1,
                            steps_per_epoch=3, batch_size=16).ask(3)
    for arch in archs:
        assert _excluded(sp, sp.validate(arch)) == []
        assert cpu_ort.predict(sp.plan(arch)) <= budget.latency_ms * (1 + 1e-9)
