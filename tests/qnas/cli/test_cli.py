import json
import re
import subprocess
import sys

import numpy as np
import pytest

from qnas.cli import main


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [l for l in err.strip().splitlines() if l.strip() and "Warning" not in l and "warn" not in l]
    assert len(lines) == 1, err
    assert lines[0].startswith("qnas: error:")
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize("argv", [[], ["demo"], ["search"], ["export"], ["export", "onnx"]])
def test_help_everywhere(argv):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0


def test_entry_point_exit_code_and_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qnas", "demo", "--device", "nope", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown latency target 'nope'" in proc.stderr and "edgetpu" in proc.stderr
    assert not (tmp_path / "r").exists(), "nothing is written on bad input"


def test_bad_space_configs(tmp_path, capsys):
    bad_bits = tmp_path / "bits.yaml"
    bad_bits.write_text("a_bits: [3, 8]\n")
    code, _, err = run_cli(capsys, "search", "--space", str(bad_bits), "--out", str(tmp_path / "r1"))
    assert_one_line_error(code, err, "a_bits", "[3]", "4-8 bits")
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: [\n")
    code, _, err = run_cli(capsys, "search", "--space", str(broken), "--out", str(tmp_path / "r2"))
    assert_one_line_error(code, err, "not valid YAML")
    code, _, err = run_cli(capsys, "search", "--space", str(tmp_path / "missing.yaml"))
    assert_one_line_error(code, err, "not found")


def test_bad_data_and_existing_output(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", images=np.zeros((40, 8, 8), np.uint8), labels=np.arange(40) % 12, num_classes=10)
    code, _, err = run_cli(capsys, "search", "--data", "npz", "--data-path", str(tmp_path / "d.npz"),
                           "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "out of range")
    code, _, err = run_cli(capsys, "search", "--data", "cifar10", "--data-path", str(tmp_path / "nowhere"))
    assert_one_line_error(code, err, "not found")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "demo", "--out", str(busy), "--candidates", "1")
    assert_one_line_error(code, err, "not empty", "--force")
    assert (busy / "keep.txt").read_text() == "mine"


def test_export_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"garbage")
    code, _, err = run_cli(capsys, "export", "onnx", str(bad), "--out", str(tmp_path / "m.onnx"))
    assert_one_line_error(code, err, "checkpoint")
    assert not (tmp_path / "m.onnx").exists()


def test_demo_end_to_end_small(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "demo", "--out", str(run), "--candidates", "2", "--search-epochs", "2",
                             "--finish-epochs", "2", "--refine-epochs", "1", "--no-progress")
    assert code == 0, err
    for name in ("config.json", "history.jsonl", "front.json", "arch.json", "model.pt", "model.onnx",
                 "pareto.png", "report.json", "refined.json"):
        assert (run / name).is_file(), name
    history = [json.loads(l) for l in (run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(0 <= h["val_acc"] <= 1 and h["latency_ms"] > 0 for h in history)
    report = json.loads((run / "report.json").read_text())
    assert report["identical_predictions"] >= 0.99
    assert report["measured_ort_latency_ms"] > 0 and report["predicted_latency_ms"] > 0
    assert "identical predictions" in out
    # the demo refines its best candidates within budget and chooses (and reports) by that accuracy
    refined = json.loads((run / "refined.json").read_text())
    assert report["refine_epochs"] == 1 and report["search_val_acc"] == refined[report["arch_uid"]]["refined_val_acc"]
    assert "then 1 QAT epochs" in out
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    onnx_out = tmp_path / "again.onnx"
    code, out, err = run_cli(capsys, "export", "onnx", str(run), "--out", str(onnx_out))
    assert code == 0, err
    assert onnx_out.is_file()
    agreement = float(re.search(r"identical predictions ([0-9.]+) %", out).group(1)) / 100
    assert agreement >= 0.99
    # one latency for one file: the export report, `qnas latency predict` and the demo's report agree
    exported = float(re.search(r"predicted latency on cpu-ort: ([0-9.e-]+) ms", out).group(1))
    code, predicted, err = run_cli(capsys, "latency", "predict", str(run))
    assert code == 0, err
    assert exported == pytest.approx(float(re.search(r"\): ([0-9.e-]+) ms", predicted).group(1)), rel=1e-3)
    assert exported == pytest.approx(report["predicted_latency_ms"], rel=1e-3)
    code, _, err = run_cli(capsys, "export", "onnx", str(run), "--out", str(onnx_out))
    assert_one_line_error(code, err, "already exists")


def test_old_import_paths_warn_but_work():
    import importlib
    import sys

    sys.modules.pop("qnas.finishing_cli", None)
    with pytest.warns(DeprecationWarning, match="qnas.cli.finish"):
        old = importlib.import_module("qnas.finishing_cli")
    from qnas.cli.finish import add_finish_parser

    assert old.add_finish_parser is add_finish_parser and old.TEACHERS == ("auto", "float", "supernet", "none")
    import qnas.calib_data.build_calib as build_calib
    from qnas.cli.calib import add_calib_parser

    with pytest.warns(DeprecationWarning, match="qnas.cli.calib"):
        assert build_calib.add_calib_parser is add_calib_parser
    import qnas.searching

    with pytest.warns(DeprecationWarning, match="accuracy_source_names"):
        assert qnas.searching.ACCURACY_SOURCES == ("train", "supernet", "predictor", "zero-cost")


def test_bad_strategy_options_are_one_line_errors(tmp_path, capsys):
    for text, needle in (("[1, 2]", "must be a JSON object"), ("{pop_size: 8}", "not valid JSON")):
        code, _, err = run_cli(capsys, "search", "--strategy-options", text, "--out", str(tmp_path / "r"))
        assert_one_line_error(code, err, "--strategy-options", needle)
    assert not (tmp_path / "r").exists()


def test_cli_latency_kinds_are_the_registry():
    from qnas.cli._args import LATENCY_KINDS
    from qnas.latency import latency_model_kinds

    assert sorted(LATENCY_KINDS) == latency_model_kinds()


@pytest.mark.parametrize("argv, needle", [
    (["search", "--budget-ms", "nan"], "argument --budget-ms: expected a positive finite number"),
    (["search", "--seed", "-1"], "argument --seed: expected a seed from 0 to 4294967295"),
    (["search", "--seed", str(2**70)], "expected a seed from 0"),
    (["finish", "qat", "RUN", "--seed", "x"], "expected an integer seed"),
    (["export", "onnx"], "the following arguments are required"),
    ([], "the following arguments are required: COMMAND"),
])
def test_argument_errors_are_one_line_with_a_pointer_to_help(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and needle in err and "--help)" in err and "usage:" not in err


def test_bad_seed_in_a_config_and_zero_supernet_epochs_are_refused(tmp_path, capsys):
    from qnas.errors import ConfigError
    from qnas.options import SearchConfig

    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*32 - 1\], got 'zero'"):
        SearchConfig.from_dict({"seed": "zero"})
    with pytest.raises(SystemExit) as e:  # refused by the flag's type, before anything is imported
        run_cli(capsys, "supernet", "train", "--epochs", "0", "--out", str(tmp_path / "sn"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "argument --epochs: expected an integer >= 1" in err
    assert not (tmp_path / "sn").exists()  # nothing written


def test_supernet_epochs_per_phase_and_lr_reach_the_supernet(tmp_path, capsys):
    from qnas.quant.checkpoint import load_checkpoint

    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "search", "--accuracy", "supernet", "--supernet-epochs", "0,0,0,1",
                             "--supernet-lr", "0.006", "--candidates", "2", "--no-progress", "--out", str(run))
    assert code == 0, err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["supernet_epochs"] == [0, 0, 0, 1] and cfg["supernet_lr"] == 0.006
    _, meta = load_checkpoint(run / "supernet" / "supernet.pt")
    assert [(p["name"], p["epochs"]) for p in meta["config"]["phases"]] == [("kernel", 0), ("depth", 0),
                                                                             ("width", 0), ("bits", 1)]
    assert meta["config"]["lr"] == 0.006 and [h["phase"] for h in meta["history"]] == ["bits"]
    for argv, needle in [(("search", "--supernet-epochs", "1,2"), "expected N or four counts K,D,W,B"),
                         (("supernet", "train", "--epochs", "0,0,0,0", "--out", str(tmp_path / "sn")),
                          "expected at least 1 epoch(s) in all")]:
        with pytest.raises(SystemExit) as e:
            run_cli(capsys, *argv)
        assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "sn").exists()
