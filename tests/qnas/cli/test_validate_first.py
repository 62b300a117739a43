"""Bad input is refused with one line before any work is done or any file written (issue 14)."""
from __future__ import annotations

import json

import pytest

from qnas.arch import Arch
from qnas.errors import ArchError

from .test_cli import assert_one_line_error, run_cli


def test_unknown_strategy_is_refused_before_the_supernet_trains(tmp_path, capsys):
    out = tmp_path / "demo"
    code, _, err = run_cli(capsys, "demo", "--strategy", "nosuch", "--out", str(out))
    assert_one_line_error(code, err, "unknown strategy 'nosuch'", "nsga2")
    assert not out.exists()


def test_arch_with_unknown_fields_is_refused(space, archs):
    d = archs[0].to_dict()
    assert Arch.from_dict(json.loads(json.dumps(d))) == archs[0]
    with pytest.raises(ArchError, match=r"unknown field\(s\) \['resolutoin'\]"):
        Arch.from_dict({**d, "resolutoin": 16})
    d["stages"][0][0]["kk"] = 3
    with pytest.raises(ArchError, match=r"stages\[0\]\[0\] has unknown field\(s\) \['kk'\]"):
        Arch.from_dict(d)


def test_supernet_out_is_checked_before_training(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("mine")
    code, _, err = run_cli(capsys, "supernet", "train", "--out", str(f))
    assert_one_line_error(code, err, "is a file")
    assert f.read_text() == "mine"
    code, _, err = run_cli(capsys, "supernet", "train", "--out", str(tmp_path / "empty"), "--resume")
    assert_one_line_error(code, err, "nothing to resume")
    assert not (tmp_path / "empty").exists()


def test_existing_report_is_refused_before_the_export(tmp_path, capsys):
    report = tmp_path / "report.json"
    report.write_text("{}")
    code, _, err = run_cli(capsys, "export", "onnx", str(tmp_path / "no-model.pt"), "--out", str(tmp_path / "m.onnx"),
                           "--report", str(report))
    assert_one_line_error(code, err, "report.json exists", "--force")
    assert report.read_text() == "{}" and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("argv, needle", [
    (["export", "onnx", "m.pt", "--out", "m.onnx", "--min-agreement", "nan"], "expected a number in [0, 1]"),
    (["latency", "measure", "--out", "t.json", "--archs", "-1"], "expected an integer >= 0"),
])
def test_values_that_would_switch_checks_off_are_refused(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, *argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_os_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    from qnas.cli import main

    f = tmp_path / "file"
    f.write_text("mine")
    code, _, err = run_cli(capsys, "search", "--out", str(f / "run"), "--no-progress")
    assert_one_line_error(code, err, "Not a directory", str(f / "run"))
    with pytest.raises(OSError):
        main(["--debug", "search", "--out", str(f / "run"), "--no-progress"])
    assert f.read_text() == "mine"


def test_unexpected_errors_are_described_in_one_line():
    import errno

    from qnas.cli import describe_unexpected

    msg, code = describe_unexpected(OSError(errno.ENOSPC, "No space left on device", "/out/model.pt"))
    assert code == 2 and "No space left on device (/out/model.pt)" in msg and "free some disk space" in msg
    assert describe_unexpected(MemoryError())[1] == 2 and describe_unexpected(RecursionError())[1] == 2
    msg, code = describe_unexpected(ValueError("bad\nsecond line"))
    assert code == 1 and "\n" not in msg and "unexpected ValueError: bad" in msg and "--debug" in msg


def test_deeply_nested_arch_file_is_one_line_error(tmp_path, capsys):
    deep = tmp_path / "arch.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run_cli(capsys, "latency", "predict", str(deep))
    assert_one_line_error(code, err, "nested too deeply")


@pytest.mark.parametrize("content, needle", [(b"\xff\xfe\x00binary", "not a text file"),
                                             (b"a: " + b"[" * 50_000 + b"]" * 50_000, "nested too deeply")])
def test_unreadable_space_yaml_is_one_line_error(tmp_path, capsys, content, needle):
    bad = tmp_path / "space.yaml"
    bad.write_bytes(content)
    code, _, err = run_cli(capsys, "search", "--space", str(bad), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "run").exists()


def test_resolutions_too_large_for_memory_are_refused(tmp_path, capsys):
    space = tmp_path / "space.yaml"
    space.write_text("resolutions: [100000]\n")
    code, _, err = run_cli(capsys, "search", "--space", str(space), "--out", str(tmp_path / "run"))
    assert_one_line_error(code, err, "resolutions must be at most 1024 px")
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "calib", "build", "--from", "digits", "--resolution", "100000", "--out", str(tmp_path / "c.npz"))
    assert e.value.code == 2 and "expected a resolution from 8 to 1024 px" in capsys.readouterr().err
    assert not any(tmp_path.glob("c.npz*")) and not (tmp_path / "run").exists()


def test_existing_latency_eval_output_is_refused_before_the_evaluation(tmp_path, capsys, monkeypatch):
    out = tmp_path / "eval.json"
    out.write_text("{}")
    monkeypatch.setattr("qnas.latency.evaluation.evaluate_latency_models",
                        lambda **kw: pytest.fail("the evaluation ran before the output was checked"))
    code, _, err = run_cli(capsys, "latency", "eval", "--out", str(out))
    assert_one_line_error(code, err, "eval.json exists", "--force")
    assert out.read_text() == "{}"


def test_finish_refuses_data_with_other_channels_than_the_space(tmp_path, capsys, archs):
    import numpy as np

    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(archs[0].to_dict()))  # an arch of the default 1-channel digits space
    data = tmp_path / "rgb.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.random((40, 3, 16, 16), dtype=np.float32), labels=np.arange(40) % 10)
    code, _, err = run_cli(capsys, "finish", "qat", str(arch), "--data", "npz", "--data-path", str(data),
                           "--out", str(tmp_path / "m.pt"), "--init", "scratch", "--teacher", "none", "--no-progress")
    assert_one_line_error(code, err, "expects 1 channel(s)", "the data has 3")
    assert not (tmp_path / "m.pt").exists()


def test_finish_checks_the_calibration_file_before_training(tmp_path, capsys, archs, monkeypatch):
    import numpy as np

    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(archs[0].to_dict()))
    calib = tmp_path / "calib.npz"
    np.savez(calib, images=np.array([object(), 1], dtype=object))
    monkeypatch.setattr("qnas.finishing.train_float", lambda *a, **k: pytest.fail("trained before checking --calib"))
    code, _, err = run_cli(capsys, "finish", "qat", str(arch), "--calib", str(calib), "--init", "ptq",
                           "--out", str(tmp_path / "m.pt"), "--no-progress")
    assert_one_line_error(code, err, "not a qnas calibration set")
    assert not (tmp_path / "m.pt").exists()
