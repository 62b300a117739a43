"""The differentiable search on the standard mobile spaces (qnas.presets): per-stage op choices,
expand-less blocks, squeeze-excite, skips and exclude rules, at a tiny resolution on synthetic data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qnas import presets
from qnas.data import ImageDataset, Splits
from qnas.genes import BLOCK_CONVS
from qnas.latency.base import LatencyModel
from qnas.latency.vectorized import VectorizedTablePredictor
from qnas.space import SearchSpace, SpaceConfig, StageConfig
from qnas.strategies import Budget, StrategyContext, create_strategy
from qnas.strategies.differentiable import ArchLogits, DifferentiableOptions, DifferentiableSearch

RES = 32
NAMES = list(presets.PRESETS)
TINY = dict(epochs=2, warmup_epochs=1, steps_per_epoch=1, batch_size=8)


from .test_differentiable import _one_thread  # noqa: F401,E402  (the same autouse fixture)


class MacsLatency(LatencyModel):
    """A synthetic target where every gene changes the latency (fast to price, no profile needed)."""

    kind = "synthetic"

    @property
    def target(self) -> str:
        return "synthetic"

    device = target  # the older name of the property

    def layer_ms(self, layer) -> float:
        return 1e-6 * layer.macs * layer.w_bits * layer.a_bits / 64 + 1e-6 * layer.out_elems * layer.a_bits + 1e-3


def small(name: str) -> SearchSpace:
    """The preset at one small resolution and its largest width, 4 classes."""
    d = presets.preset_dict(name)
    d.update(resolutions=[RES], widths=[max(d["widths"])], num_classes=4)
    return SearchSpace.from_dict(d)


@pytest.fixture(scope="module")
def splits() -> Splits:
    gen = torch.Generator().manual_seed(0)

    def ds(n: int) -> ImageDataset:
        return ImageDataset(torch.randn(n, 3, RES, RES, generator=gen), torch.arange(n) % 4, 4, "synthetic",
                            (0.0,) * 3, (1.0,) * 3)

    return Splits(ds(16), ds(8), ds(8))


def _randomise(logits: ArchLogits, seed: int, scale: float | None = None) -> None:
    """Random logits: normal with ``scale``, or (None) one-hot rows at random choices (50 vs. 0)."""
    g = torch.Generator().manual_seed(seed)
    skip = logits.space.config.allow_skip
    with torch.no_grad():
        for name, p in logits.named_parameters():
            if scale is not None:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
            else:  # an op row picks one of the stage's ops (a skip is pushed separately)
                n = p.shape[-1] - (1 if skip and name.startswith("op_") else 0)
                pick = torch.randint(0, n, p.shape[:-1], generator=g)
                p.copy_(torch.nn.functional.one_hot(pick, p.shape[-1]) * 50.0)


@pytest.mark.parametrize("name", NAMES)
def test_logits_are_sized_by_each_stage_choices(name):
    space = small(name)
    c, layout = space.config, space.genes
    logits = ArchLogits(space, 0, 0)
    skip = 1 if c.allow_skip else 0
    shapes = layout.group_shapes()
    for group, tensors in logits.logits().items():
        want = shapes[group]
        got = [tuple(t.shape) for t in tensors] if isinstance(tensors, list) else tuple(tensors.shape)
        assert got == ([tuple(s) for s in want] if isinstance(want, list) else tuple(want)), group
    params = {n: p for n, p in logits.named_parameters()}
    for si, s in enumerate(c.stages):
        n_ops = len(space.stage_ops[si])
        assert tuple(logits.op[si].shape) == (max(s.depths), n_ops + skip)
        assert (f"op_{si}" in params) == (n_ops + (skip if max(s.depths) > 1 else 0) > 1)
        assert (f"depth_{si}" in params) == (len(s.depths) > 1)
        # the expand conv's bit genes are learned only where some op of the stage has an expand conv
        n_convs = len(BLOCK_CONVS) if layout.op_has_expand[si][:n_ops].any() else len(BLOCK_CONVS) - 1
        assert tuple(params[f"w_bits_{si}"].shape) == (max(s.depths), n_convs, len(c.w_bits))
        assert tuple(params[f"a_bits_{si}"].shape) == (max(s.depths), n_convs, len(c.a_bits))
    # every preset's first stage is one fixed k3e1 block: no op or depth logits, no expand-conv bits
    assert space.stage_ops[0] == ((3, 1),) and c.stages[0].depths == (1,)
    assert "op_0" not in params and "depth_0" not in params
    assert params["w_bits_0"].shape[1] == 2
    # the stem/head bits are fixed (8 bits): constants, not parameters
    assert not {"stem_w", "stem_a", "head_w", "head_a"} & set(params)
    if name == "cifar-small":  # exclude rule: k5 x e6 in stage 1 has no logit at all
        assert (5, 6) not in space.stage_ops[1] and logits.op[1].shape[-1] == 2 * 3 - 1
    if name == "mobilenetv3-large":  # stage 3: kernels {3,5} x expands {2.3,2.5,3,4,6}
        assert logits.op[3].shape[-1] == 10 and logits.op[1].shape[-1] == 4


@pytest.mark.parametrize("name", NAMES)
def test_derived_archs_are_valid_and_expected_latency_is_exact(name):
    space = small(name)
    predictor = VectorizedTablePredictor(space, MacsLatency().layer_ms)
    logits = ArchLogits(space, 0, 0)
    for seed in range(3):
        _randomise(logits, seed)  # one-hot: E[latency] is the derived arch's
        if space.config.allow_skip:  # skips pushed everywhere: never at a stage's first block
            with torch.no_grad():
                for si, t in enumerate(logits.op):
                    if t.requires_grad:
                        t[:, -1] = 100.0
        vec = logits.genes()
        arch = space.validate(space.decode(vec))
        assert all(b.is_skip or (b.kernel, b.expand) in space.stage_ops[si]
                   for si, blocks in enumerate(arch.stages) for b in blocks)
        e_ms = predictor.expected_latency(logits.distribution()).item()
        assert e_ms == pytest.approx(float(predictor.predict_encoded(np.asarray([space.canonical(vec)]))[0]), rel=1e-4)
        assert e_ms == pytest.approx(MacsLatency().predict(space.plan(arch)), rel=1e-4)
    # the expected-latency gradient reaches every learned logit
    _randomise(logits, 7, 0.5)
    logits.zero_grad()
    predictor.expected_latency(logits.distribution()).backward()
    for n, p in logits.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", NAMES)
def test_search_meets_a_budget_between_smallest_and_largest(name, splits):
    space = small(name)
    model = MacsLatency()
    lo = model.predict(space.plan(space.uniform(2, 4, largest=False)))
    hi = model.predict(space.plan(space.uniform(8, 8)))
    budget = lo + 0.3 * (hi - lo)
    strat = create_strategy("differentiable", space, seed=0, budget=Budget(latency_ms=budget),
                            context=StrategyContext(splits=splits, latency=model), **TINY)
    archs = strat.ask(2)
    assert archs[0] == strat.derived and len(set(archs)) == len(archs) == 2
    for a in archs:
        space.validate(a)
        assert model.predict(space.plan(a)) <= budget
    s = strat.summary
    assert s["derived_ms"] <= budget == s["budget_ms"]
    assert s["derived_val_acc"] is None or 0 <= s["derived_val_acc"] <= 1
    assert np.isfinite(s["expected_ms"]) and s["expected_ms"] > 0


def test_arch_step_moves_only_learned_logits(splits):
    space = small("proxyless-mobile")
    search = DifferentiableSearch(space, VectorizedTablePredictor(space, MacsLatency().layer_ms),
                                  lambda a: MacsLatency().predict(space.plan(a)), None,
                                  DifferentiableOptions(**TINY), seed=0)
    x, y = splits.train.images[:8], splits.train.labels[:8]
    fixed = {n: b.clone() for n, b in search.arch.named_buffers()}
    old = {n: p.detach().clone() for n, p in search.arch.named_parameters()}
    search.weight_step(x, y, 1.0, uniform=True)
    ce, acc, e_ms = search.arch_step(x, y, 1.0)
    assert np.isfinite(ce) and 0 <= acc <= 1 and e_ms > 0
    assert all(torch.equal(b, fixed[n]) for n, b in search.arch.named_buffers())
    moved = {n for n, p in search.arch.named_parameters() if not torch.equal(p.detach(), old[n])}
    assert {"op_1", "w_bits_1", "a_bits_1"} <= moved
    # no skip at a stage's first block, and the derived arch is valid
    assert all(search.arch.distribution().op[si][0, -1].item() < 1e-6 for si in range(len(space.config.stages)))
    space.validate(space.decode(search.derived_genes()))


@pytest.mark.parametrize("name", NAMES + ["default", "skip"])
def test_vectorised_canonical_matches_the_space(name):
    space = (SearchSpace() if name == "default" else SearchSpace(SpaceConfig(allow_skip=True)) if name == "skip"
             else small(name))
    rng = np.random.default_rng(0)
    X = np.stack([[rng.integers(0, g.n_choices) for g in space.genes.genes] for _ in range(100)])
    assert space.genes.canonical_matrix(X).tolist() == [space.canonical(v) for v in X]


def test_a_space_without_choices_but_bits_has_no_other_logits_and_one_without_any_trains():
    fixed = dict(resolutions=(12,), widths=(0.5,), kernels=(3,), expands=(4,),
                 stages=(StageConfig(16, (1,), 1), StageConfig(24, (2,), 2)))
    space = SearchSpace(SpaceConfig(**fixed))
    assert {n.rsplit("_", 1)[0] for n, _ in ArchLogits(space, 0, 0).named_parameters()} == {"w_bits", "a_bits"}
    space = SearchSpace(SpaceConfig(**fixed, w_bits=(8,), a_bits=(8,)))
    search = DifferentiableSearch(space, VectorizedTablePredictor(space, MacsLatency().layer_ms),
                                  lambda a: MacsLatency().predict(space.plan(a)), None,
                                  DifferentiableOptions(**TINY), seed=0)
    assert not list(search.arch.parameters()) and search.a_opt is None
    x, y = torch.randn(4, 1, 12, 12), torch.tensor([0, 1, 2, 3])
    search.weight_step(x, y, 1.0, uniform=True)
    ce, _, e_ms = search.arch_step(x, y, 1.0)
    assert np.isfinite(ce) and e_ms > 0
    assert space.decode(search.derived_genes()) == space.uniform(8, 8, resolution=12)
