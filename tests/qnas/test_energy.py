"""Energy as an objective and a budget (issue 13 item 3): on targets whose profile gives energy."""
import pytest

from qnas.errors import ConfigError
from qnas.latency import create_latency_model
from qnas.pareto import objective_front
from qnas.searching import score_record, search
from qnas.space import SearchSpace
from qnas.strategies import create_strategy
from qnas.strategies.base import Budget

SPACE = SearchSpace()


def test_records_carry_energy_only_where_the_target_predicts_it():
    arch = SPACE.sample(0)
    with_energy = score_record(SPACE, arch, create_latency_model("bitfusion"), {"val_acc": 0.5}, 0)
    assert with_energy["energy_mj"] > 0
    low = SPACE.uniform(4, 4, largest=False, resolution=arch.resolution)
    high = SPACE.uniform(8, 8, largest=False, resolution=arch.resolution)
    e = [score_record(SPACE, a, create_latency_model("bitfusion"), {"val_acc": 0.5}, 0)["energy_mj"] for a in (low, high)]
    assert e[0] < e[1]  # BitFusion: fewer bits, less energy
    assert "energy_mj" not in score_record(SPACE, arch, create_latency_model("cpu-ort"), {"val_acc": 0.5}, 0)


def test_energy_budget_counts_and_refuses_records_without_energy():
    b = Budget(energy_mj=1.0)
    assert b.ok({"latency_ms": 1, "size_kb": 1, "peak_act_kb": 1, "energy_mj": 0.9})
    assert b.violation({"latency_ms": 1, "size_kb": 1, "peak_act_kb": 1, "energy_mj": 1.5}) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="energy"):
        b.ok({"latency_ms": 1, "size_kb": 1, "peak_act_kb": 1})


def test_front_in_three_objectives_keeps_exactly_the_non_dominated():
    rec = lambda i, acc, ms, mj: {"uid": i, "val_acc": acc, "latency_ms": ms, "energy_mj": mj}
    records = [rec("a", 0.9, 1.0, 5.0), rec("b", 0.8, 1.0, 1.0),   # b: worse accuracy, less energy: kept
               rec("c", 0.8, 2.0, 6.0),                             # dominated by a
               rec("d", 0.95, 3.0, 9.0), rec("e", 0.95, 3.0, 9.0)]  # duplicates: one kept
    front = objective_front(records, ("accuracy", "latency", "energy"))
    assert [r["uid"] for r in front] == ["a", "b", "d"]
    assert [r["uid"] for r in objective_front(records)] == ["a", "d"]  # accuracy vs latency only


def test_strategies_that_price_by_latency_alone_refuse_an_energy_budget():
    with pytest.raises(ConfigError, match="energy budget"):
        create_strategy("ofa", SPACE, seed=0, budget=Budget(energy_mj=1.0))
    create_strategy("random", SPACE, seed=0, budget=Budget(energy_mj=1.0))  # judged on records: fine


def test_search_with_an_energy_objective_and_budget(tmp_path):
    result = search(target="bitfusion", strategy="nsga2", n_candidates=8, accuracy="zero-cost", progress=False,
                    strategy_options={"objectives": ["accuracy", "latency", "energy"], "pop_size": 4},
                    out=tmp_path / "run")
    assert all(r["energy_mj"] > 0 for r in result.records)
    assert result.objectives == ("accuracy", "latency", "energy")
    front = result.front
    for r in result.records:  # nothing outside the front dominates a front member
        for f in front:
            assert not (r["val_acc"] >= f["val_acc"] and r["latency_ms"] <= f["latency_ms"]
                        and r["energy_mj"] <= f["energy_mj"] and r is not f
                        and (r["val_acc"], r["latency_ms"], r["energy_mj"]) != (f["val_acc"], f["latency_ms"], f["energy_mj"]))
    limit = sorted(r["energy_mj"] for r in result.records)[3]
    capped = search(target="bitfusion", strategy="random", n_candidates=8, accuracy="zero-cost", progress=False,
                    energy_budget_mj=limit)
    assert capped.best()["energy_mj"] <= limit
    with pytest.raises(ConfigError, match="predicts no energy"):
        search(target="cpu-ort", n_candidates=2, accuracy="zero-cost", progress=False, energy_budget_mj=1.0)


def test_cli_objectives_and_energy_budget(tmp_path, capsys):
    import json

    from qnas.cli import main

    code = main(["search", "--accuracy", "zero-cost", "--candidates", "4", "--target", "bitfusion", "--strategy",
                 "nsga2", "--objectives", "accuracy,energy", "--energy-mj", "5", "--no-progress",
                 "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert code == 0 and " mJ  " in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["strategy_options"]["objectives"] == ["accuracy", "energy"] and config["energy_budget_mj"] == 5
    assert config["latency_low_bits"]["pwconv"] == {"w2": "native", "w4": "native", "a4": "native"}
    with pytest.raises(SystemExit) as e:
        main(["search", "--objectives", "accuracy"])
    assert e.value.code == 2 and "2 or more" in capsys.readouterr().err
    code = main(["search", "--accuracy", "zero-cost", "--candidates", "2", "--energy-mj", "1", "--no-progress",
                 "--out", str(tmp_path / "cpu")])
    assert code == 2 and "predicts no energy" in capsys.readouterr().err and not (tmp_path / "cpu").exists()


# ---- energy from a latency table (an mj column: APQ's BitFusion table publishes one) ----------------
def _energy_table(space, archs=None):
    """The analytic BitFusion model's latency and energy of every layer key of ``space`` as a table."""
    from qnas.latency.table import LatencyTable, space_layer_keys

    model = create_latency_model("bitfusion")
    layers = space_layer_keys(space, archs)
    ms = {l.key(): c.ms for l in layers for c in model.breakdown([l])}
    mj = {l.key(): e for l in layers for e in model.energy_breakdown([l])}
    return LatencyTable(ms, meta={"device": "bitfusion-table"}, energy=mj), model


def test_table_energy_round_trips_and_prices_like_its_latency(tmp_path):
    from qnas.errors import LatencyTableError
    from qnas.latency.table import LatencyTable, TableLatencyModel, load_table

    archs = [SPACE.sample(i) for i in range(3)]
    table, analytic = _energy_table(SPACE, archs)
    assert table.has_energy
    for suffix in (".json", ".csv"):
        back = load_table(table.save(tmp_path / f"t{suffix}"))
        assert back == table and back.has_energy, suffix
    model = TableLatencyModel(table)
    for arch in archs:
        plan = SPACE.plan(arch)
        assert model.predict_energy(plan) == pytest.approx(analytic.predict_energy(plan), rel=1e-9)
    # a fallback rule scales the energy as it scales the latency; a default needs an energy default
    key = next(k for k in table if k[0] == "pwconv")
    other = key[:7] + (3, key[8])
    rules = LatencyTable(dict(table), energy=table.energies(), fallbacks=[{"w_bits": 3, "use_w_bits": key[7],
                                                                           "scale": 0.5}], defaults={"fc": 0.1})
    assert rules.energy(other) == pytest.approx(0.5 * table.energy(key))
    fc = ("fc", 7, 10, 1, 1, 1, 1, 8, 8)
    with pytest.raises(LatencyTableError, match="energy_defaults"):
        rules.energy(fc)
    assert rules.with_rules().energies() == rules.energies()
    assert LatencyTable(dict(table), energy=table.energies(), defaults={"fc": 0.1},
                        energy_defaults={"fc": 0.2}).energy(fc) == 0.2
    partial = LatencyTable(dict(table), energy=dict(list(table.energies().items())[:3]))
    assert not partial.has_energy and not TableLatencyModel(partial).has_energy
    with pytest.raises(LatencyTableError, match="mj=-1"):
        LatencyTable({key: 1.0}, energy={key: -1})
    with pytest.raises(LatencyTableError, match="no ms entry"):
        LatencyTable({key: 1.0}, energy={other: 1.0})
    merged = partial.merge(table)
    assert merged.has_energy and merged.energies() == table.energies()


def test_search_with_an_energy_objective_on_a_table(tmp_path):
    from qnas.space import SearchSpace

    space = SearchSpace.from_dict({"resolutions": [12], "widths": [0.5, 1.0], "kernels": [3, 5], "expands": [3],
                                   "stages": [{"channels": 16, "depths": [1, 2]},
                                              {"channels": 24, "depths": [1], "stride": 2}]})
    table, analytic = _energy_table(space)
    path = table.save(tmp_path / "bf.json")
    result = search(space=space, latency_table=str(path), strategy="nsga2", n_candidates=6, accuracy="zero-cost",
                    progress=False, strategy_options={"objectives": ["accuracy", "latency", "energy"],
                                                      "pop_size": 4}, out=tmp_path / "run")
    assert result.target == "bitfusion-table"
    for r in result.records:
        from qnas.arch import Arch

        plan = space.plan(Arch.from_dict(r["arch"]))
        assert r["energy_mj"] == pytest.approx(analytic.predict_energy(plan), rel=1e-4, abs=1e-6)
