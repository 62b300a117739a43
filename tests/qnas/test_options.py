"""Typed options: one default per setting, read by the CLI, the library and the demo; torch-free."""
import subprocess
import sys
from dataclasses import fields

import pytest

from qnas.errors import ConfigError
from qnas.options import (DemoConfig, PTQFinishOptions, QATFinishOptions, SearchConfig, demo_search_config,
                          search_budget, with_fields)
from qnas.pareto import most_accurate
from qnas.strategies import Budget


def test_light_modules_and_cli_help_import_no_torch():
    probe = ("import sys, qnas.options, qnas.accuracy_sources, qnas.dataset_kinds, qnas.cli, qnas.exporters.targets; "
             "print([m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy')])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "qnas", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "torch" not in out.stderr


def test_with_fields_and_validation():
    opts = with_fields(QATFinishOptions(), {"epochs": 3, "teacher": None})
    assert opts.epochs == 3 and opts.validate().teacher is None
    with pytest.raises(ConfigError, match=r"unknown QATFinishOptions field\(s\) \['epoch'\]; valid: .*'epochs'"):
        with_fields(QATFinishOptions(), {"epoch": 3})
    with pytest.raises(ConfigError, match="unknown teacher 'teacher'"):
        QATFinishOptions(teacher="teacher").validate()
    with pytest.raises(ConfigError, match="unknown init"):
        QATFinishOptions(init="warm").validate()
    with pytest.raises(ConfigError, match="unknown PTQ method 'adaround'"):
        PTQFinishOptions(method="adaround").validate()
    with pytest.raises(ConfigError, match="at least 2"):
        PTQFinishOptions(batch_size=1).validate()


def test_finish_keywords_are_checked_before_any_work(tmp_path):
    from qnas.finishing import finish_ptq, finish_qat

    with pytest.raises(ConfigError, match="unknown QATFinishOptions field"):
        finish_qat(tmp_path / "missing", epoch=1)
    with pytest.raises(ConfigError, match="unknown PTQ method"):
        finish_ptq(tmp_path / "missing", None, "adaround")
    with pytest.raises(ConfigError, match="neither a run directory"):
        finish_qat(tmp_path / "missing", QATFinishOptions(epochs=1), progress=False)


def test_demo_defaults_come_from_the_finish_options():
    demo = DemoConfig()
    assert demo.finish_lr == QATFinishOptions().lr and demo.finish_kd_weight == QATFinishOptions().kd_weight
    assert demo.search.strategy == "nsga2" and demo.search.strategy_options == {"pop_size": 8}
    assert demo_search_config(strategy="random").strategy_options == {}


def test_cli_defaults_are_the_option_defaults():
    from qnas.cli import build_parser

    parser = build_parser()
    search = vars(parser.parse_args(["search"]))
    cfg = SearchConfig()
    shared = [f.name for f in fields(SearchConfig) if f.name in search and f.name != "strategy_options"]
    assert len(shared) >= 18 and all(search[n] == getattr(cfg, n) for n in shared), shared
    demo = vars(parser.parse_args(["demo"]))
    dcfg = demo_search_config()
    assert all(demo[n] == getattr(dcfg, n) for n in ("strategy", "accuracy", "supernet_epochs", "n_candidates"))
    assert demo["finish_epochs"] == DemoConfig().finish_epochs
    qat = vars(parser.parse_args(["finish", "qat", "RUN"]))
    assert {k: qat[k] for k in ("epochs", "lr", "kd_weight", "kd_temperature", "teacher", "init", "float_epochs")} == {
        k: getattr(QATFinishOptions(), k) for k in ("epochs", "lr", "kd_weight", "kd_temperature", "teacher", "init",
                                                    "float_epochs")}
    ptq = vars(parser.parse_args(["finish", "ptq", "RUN"]))
    assert ptq["method"] == PTQFinishOptions().method and ptq["float_epochs"] == PTQFinishOptions().float_epochs


def test_budget_record_and_the_pick_within_budget():
    from qnas.costs import count_costs
    from qnas.space import SearchSpace

    space = SearchSpace()
    plan = space.plan(space.sample(0))
    rec = Budget.record(plan, 0.25)
    costs = count_costs(plan)
    assert set(rec) == set(Budget.KEYS) - {"energy_mj"} and rec["latency_ms"] == 0.25  # no energy given
    assert Budget.record(plan, 0.25, 1.5)["energy_mj"] == 1.5
    assert rec["size_kb"] == costs.size_kb and rec["peak_act_kb"] == costs.peak_activation_bytes / 1024
    assert Budget(latency_ms=0.2).violation(rec) == pytest.approx(0.25)
    assert Budget(size_kb=rec["size_kb"]).ok(rec)
    cfg = SearchConfig(latency_budget_ms=1.0, memory_budget_kb=5.0)
    assert cfg.budget == search_budget(cfg.to_dict()) == Budget(1.0, None, 5.0)
    records = [{"val_acc": 0.9, "latency_ms": 2.0, "size_kb": 1, "peak_act_kb": 1},
               {"val_acc": 0.8, "latency_ms": 0.9, "size_kb": 1, "peak_act_kb": 1},
               {"val_acc": 0.8, "latency_ms": 0.5, "size_kb": 1, "peak_act_kb": 1}]
    assert most_accurate(records, Budget()) is records[0]
    assert most_accurate(records, Budget(latency_ms=1.0)) is records[2]  # a tie goes to the faster
    assert most_accurate(records, Budget(latency_ms=0.1)) is None
