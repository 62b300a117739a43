"""Accuracy predictors (masked one-hot MLP), the synthetic benchmark accuracy, and zero-cost proxies."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qnas.errors import ConfigError, QnasError
from qnas.predictors import AccuracyPredictor, ArchFeaturizer, PredictorEvaluator, SyntheticAccuracy
from qnas.space import SearchSpace, SpaceConfig

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def space():
    return SearchSpace()


@pytest.fixture(scope="module")
def data(space):
    syn = SyntheticAccuracy(space, seed=0)
    rng = np.random.default_rng(0)
    archs = list(dict.fromkeys(space.sample(rng) for _ in range(900)))
    return archs, syn.many(archs)


@pytest.fixture(scope="module")
def fitted(space, data):
    archs, y = data
    return AccuracyPredictor(space, epochs=60, seed=0).fit(archs[:600], y[:600])


# ---- features -------------------------------------------------------------------
def test_features_are_masked_one_hot(space):
    f = ArchFeaturizer(space)
    assert f.dim == sum(b + 1 for b in space.bounds())
    a = space.sample(3)
    row = f([a])[0]
    # one 1 per active gene, nothing for inactive ones
    X = f.genes([a])
    assert row.sum() == f.active(X).sum() < len(space.bounds())
    assert set(np.unique(row)) <= {0.0, 1.0}
    # a gene that does not change the arch does not change the features
    x = X[0].copy()
    x[6] = 0  # stage 0 at depth 1: its second block (genes 14..20) is inactive
    y = x.copy()
    y[15] = (y[15] + 1) % (space.bounds()[15] + 1)
    assert np.array_equal(f(x[None]), f(y[None]))
    assert f(x[None])[0, f.offsets[15]:f.offsets[15] + space.bounds()[15] + 1].sum() == 0


# ---- the predictor ----------------------------------------------------------------
def test_predictor_learns_the_synthetic_accuracy(fitted, data):
    archs, y = data
    s = fitted.score(archs[600:], y[600:])
    assert s["n"] == len(archs) - 600 >= 250
    assert s["kendall_tau"] > 0.6, s
    assert s["rmse"] < 0.05
    assert fitted.loss_history[-1] < fitted.loss_history[0]


def test_predictor_is_seeded(space, data):
    archs, y = data
    p1 = AccuracyPredictor(space, hidden=(32,), epochs=5, seed=7).fit(archs[:100], y[:100])
    state = torch.random.get_rng_state()
    p2 = AccuracyPredictor(space, hidden=(32,), epochs=5, seed=7).fit(archs[:100], y[:100])
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    assert np.array_equal(p1.predict(archs[100:150]), p2.predict(archs[100:150]))
    # gene matrices and archs give the same predictions
    X = np.array([space.encode(a) for a in archs[100:150]])
    assert np.allclose(p1.predict(X), p1.predict(archs[100:150]))


@pytest.mark.parametrize("suffix", [".json", ".pt"])
def test_save_load_round_trip(fitted, data, space, tmp_path, suffix):
    archs, _ = data
    path = fitted.save(tmp_path / f"pred{suffix}")
    back = AccuracyPredictor.load(path, space)
    assert np.allclose(back.predict(archs[600:]), fitted.predict(archs[600:]), atol=1e-6)
    other = SearchSpace(SpaceConfig(resolutions=(16,)))
    with pytest.raises(QnasError, match="different search space"):
        AccuracyPredictor.load(path, other)


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"schema": "something-else"}')
    with pytest.raises(QnasError):
        AccuracyPredictor.load(p)
    with pytest.raises(QnasError, match="not found"):
        AccuracyPredictor.load(tmp_path / "missing.pt")


def test_load_refuses_a_pickle_in_one_line_without_running_it(tmp_path):
    import pickle

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"meta": print, "state": {}}))  # would call a function if unpickled
    with pytest.raises(QnasError, match="never unpickles") as e:
        AccuracyPredictor.load(evil)
    assert "\n" not in str(e.value)


def test_unfitted_and_bad_inputs(space):
    p = AccuracyPredictor(space)
    with pytest.raises(QnasError, match="not fitted"):
        p.predict([space.sample(0)])
    with pytest.raises(QnasError, match="accuracies"):
        p.fit([space.sample(0), space.sample(1)], [0.5])
    with pytest.raises(ConfigError):
        AccuracyPredictor(space, hidden=())


def test_update_refits_on_old_and_new_pairs(space, data):
    archs, y = data
    p = AccuracyPredictor(space, hidden=(16,), epochs=3, seed=0).fit(archs[:50], y[:50])
    p.update(archs[40:80], y[40:80])
    assert len(p.data[0]) == 80


def test_predictor_evaluator(fitted, space):
    ev = PredictorEvaluator(fitted)
    a = space.sample(5)
    rec = ev(a)
    assert rec["acc_source"] == "predictor"
    assert rec["val_acc"] == pytest.approx(fitted.predict([a])[0])
    assert [r["val_acc"] for r in ev.many([a, a])] == pytest.approx([rec["val_acc"]] * 2)
    assert PredictorEvaluator(lambda arch: 0.5)(a)["val_acc"] == 0.5


def test_synthetic_accuracy_is_deterministic_and_plausible(space):
    syn = SyntheticAccuracy(space, seed=0)
    big8, big2 = space.uniform(8, 8), space.uniform(2, 4)
    small8 = space.uniform(8, 8, largest=False)
    assert syn(big8) == SyntheticAccuracy(space, seed=0)(big8)
    assert 0.9 < syn(big8) <= 0.995
    assert syn(big8) > syn(small8) > 0.5
    assert syn(big8) > syn(big2)


# ---- zero-cost proxies ----------------------------------------------------------------
@pytest.fixture(scope="module")
def images():
    from qnas.data import load_digits

    return load_digits()


@pytest.mark.parametrize("proxy", ["naswot", "synflow"])
def test_zero_cost_proxies_are_finite_and_tell_archs_apart(space, images, proxy):
    from qnas.zero_cost import ZeroCostEvaluator

    ev = ZeroCostEvaluator(space, images, proxy=proxy, batch_size=16)
    tiny, large = space.uniform(8, 8, largest=False), space.uniform(8, 8)
    rt, rl = ev(tiny), ev(large)
    for r in (rt, rl):
        assert math.isfinite(r["score"]) and r["val_acc"] == r["score"]
        assert r["proxy"] == proxy and r["acc_source"] == "zero-cost"
    assert rl["score"] > rt["score"]  # both proxies grow with capacity
    assert ev(tiny)["score"] == pytest.approx(rt["score"])  # seeded


def test_zero_cost_checks_its_inputs(space, images):
    from qnas.zero_cost import ZeroCostEvaluator

    with pytest.raises(ConfigError, match="naswot"):
        ZeroCostEvaluator(space, images, proxy="grasp")
    with pytest.raises(ConfigError, match="channel"):
        ZeroCostEvaluator(space, torch.zeros(4, 3, 8, 8))


def test_synflow_leaves_the_model_untouched(space):
    from qnas.quant.build import build_model
    from qnas.zero_cost import synflow_score

    torch.manual_seed(0)
    model = build_model(space, space.sample(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = synflow_score(model, (1, 16, 16))
    assert math.isfinite(s)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
