import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from qnas.calib_data.build import build_calibration_set
from qnas.cli.calib import add_calib_parser, main as calib_main
from qnas.calib_data.calibration import CalibrationSet
from qnas.errors import DataError, QnasError


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture(scope="module")
def calib12():
    return build_calibration_set("digits", n=100, resolution=12, seed=3)


def test_class_balanced_and_remainder_spread():
    cs = build_calibration_set("digits", n=105, seed=1)
    counts = cs.class_counts()
    assert sorted(counts) == list(range(10))
    assert sum(counts.values()) == 105 == len(cs)
    assert sorted(counts.values()) == [10] * 5 + [11] * 5
    assert cs.images.dtype == torch.float32 and cs.labels.dtype == torch.int64


def test_seed_determinism(calib12):
    again = build_calibration_set("digits", n=100, resolution=12, seed=3)
    other = build_calibration_set("digits", n=100, resolution=12, seed=4)
    assert torch.equal(calib12.images, again.images) and torch.equal(calib12.labels, again.labels)
    assert not torch.equal(calib12.images, other.images)


def test_drawn_from_train_split_only():
    from qnas.data import load_digits, split

    parts = split(load_digits(), seed=0)
    cs = build_calibration_set("digits", n=200, seed=0)  # native 8x8
    train = {bytes(x.numpy().tobytes()) for x in parts.train.images}
    got = [bytes(x.numpy().tobytes()) for x in cs.images]
    assert all(g in train for g in got)
    with pytest.raises(DataError, match="test split is never used"):
        build_calibration_set("digits", n=10, split="test")


def test_resolution_from_arg_and_arch(tmp_path, calib12):
    from qnas.space import SearchSpace

    assert tuple(calib12.images.shape[1:]) == (1, 12, 12)
    arch = SearchSpace().uniform(8, 8, largest=False, resolution=16)
    (tmp_path / "arch.json").write_text(json.dumps(arch.to_dict()))
    for a in (arch, tmp_path / "arch.json", tmp_path):
        cs = build_calibration_set("digits", n=20, arch=a)
        assert cs.resolution == (16, 16) and cs.meta["resolution"] == 16
    with pytest.raises(DataError, match="conflicting resolutions"):
        build_calibration_set("digits", n=20, arch=arch, resolution=12)


def test_normalization_recorded_and_given(calib12):
    from qnas.data import load_digits

    ds = load_digits()
    assert calib12.meta["mean"] == pytest.approx(list(ds.mean))
    cs = build_calibration_set("digits", n=20, mean=[0.5], std=[0.25])
    assert cs.meta["mean"] == [0.5] and cs.meta["std"] == [0.25]
    assert float(cs.images.min()) == pytest.approx(-2.0)


def test_metadata_round_trip(tmp_path, calib12):
    p = calib12.save(tmp_path / "c.npz")
    back = CalibrationSet.load(p)
    assert torch.equal(back.images, calib12.images) and torch.equal(back.labels, calib12.labels)
    for k in ("source", "src_path", "seed", "n", "resolution", "mean", "std", "created_by", "split", "split_seed"):
        assert back.meta[k] == calib12.meta[k], k
    assert back.meta["source"] == "digits" and back.meta["seed"] == 3 and back.meta["n"] == 100
    with np.load(p, allow_pickle=False) as z:  # no pickles inside
        assert set(z.files) == {"images", "labels", "meta"}
    assert [b.shape[0] for b in back.batches(32)] == [32, 32, 32, 4]
    assert "per-class counts" in back.describe()
    rep = list(back.representative_data(limit=3, layout="NHWC"))
    assert len(rep) == 3 and rep[0][0].shape == (1, 12, 12, 1) and rep[0][0].dtype == np.float32


def test_check_for_shape_mismatch(calib12):
    calib12.check_for(1, 12)
    with pytest.raises(DataError) as e:
        calib12.check_for(1, 16)
    assert _one_line_error(e) == ("calibration images are 1x12x12 but the model expects 1x16x16; "
                                  "rebuild with --resolution 16")
    with pytest.raises(DataError, match="3x12x12"):
        calib12.check_for(3, 12)
    with pytest.raises(DataError, match="normalized with mean"):
        calib12.check_for(1, 12, mean=[0.1], std=[1.0])


def _write(path: Path, **arrays) -> Path:
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def _meta(**kw) -> np.ndarray:
    return np.array([json.dumps({"source": "digits", **kw})])


@pytest.mark.parametrize("case,arrays,match", [
    ("dtype", dict(images=np.zeros((4, 1, 8, 8), np.uint8), labels=np.arange(4), meta=_meta()), "must be float32"),
    ("shape", dict(images=np.zeros((4, 8, 8), np.float32), labels=np.arange(4), meta=_meta()), "4-D"),
    ("nan", dict(images=np.full((4, 1, 8, 8), np.nan, np.float32), labels=np.arange(4), meta=_meta()), "NaN or Inf"),
    ("inf", dict(images=np.full((4, 1, 8, 8), np.inf, np.float32), labels=np.arange(4), meta=_meta()), "NaN or Inf"),
    ("labels", dict(images=np.zeros((4, 1, 8, 8), np.float32), labels=np.arange(3), meta=_meta()), "4 images but 3 labels"),
    ("float-labels", dict(images=np.zeros((4, 1, 8, 8), np.float32), labels=np.zeros(4), meta=_meta()), "expected integers"),
    ("keys", dict(images=np.zeros((4, 1, 8, 8), np.float32), labels=np.arange(4)), "lacks 'meta'"),
    ("meta", dict(images=np.zeros((4, 1, 8, 8), np.float32), labels=np.arange(4), meta=np.array(["{oops"])), "not valid JSON"),
    ("empty", dict(images=np.zeros((0, 1, 8, 8), np.float32), labels=np.arange(0), meta=_meta()), "empty"),
])
def test_load_rejects_bad_files(tmp_path, case, arrays, match):
    p = _write(tmp_path / f"{case}.npz", **arrays)
    with pytest.raises(DataError, match=match) as e:
        CalibrationSet.load(p)
    _one_line_error(e)


def test_load_rejects_non_npz(tmp_path):
    for name, content in (("text.npz", b"not a zip at all"), ("arr.npy", None)):
        p = tmp_path / name
        if content is None:
            np.save(p, np.zeros(3))
        else:
            p.write_bytes(content)
        with pytest.raises(DataError, match="not an npz file") as e:
            CalibrationSet.load(p)
        _one_line_error(e)
    with pytest.raises(DataError, match="not found"):
        CalibrationSet.load(tmp_path / "missing.npz")


def test_object_arrays_are_refused(tmp_path):
    p = _write(tmp_path / "obj.npz", images=np.zeros((2, 1, 8, 8), np.float32), labels=np.arange(2),
               meta=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickle"):
        CalibrationSet.load(p)


def test_in_memory_validation():
    with pytest.raises(DataError, match="NaN or Inf"):
        CalibrationSet(torch.full((2, 1, 8, 8), float("nan")), torch.arange(2), {})
    with pytest.raises(DataError, match="float32"):
        CalibrationSet(torch.zeros(2, 1, 8, 8, dtype=torch.int32), torch.arange(2), {})
    with pytest.raises(DataError, match="2 images but 3 labels"):
        CalibrationSet(torch.zeros(2, 1, 8, 8), torch.arange(3), {})


def test_too_few_samples_per_class_says_how_to_fix(tmp_path):
    out = tmp_path / "c.npz"
    with pytest.raises(DataError, match=r"lower --n to at most \d+") as e:
        build_calibration_set("digits", n=5000)
    _one_line_error(e)
    with pytest.raises(DataError, match="raise --n to at least 30"):
        build_calibration_set("digits", n=20, min_per_class=3)
    assert not out.exists()


def test_npz_source_with_too_few_per_class(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0] * 40 + [1] * 6)
    src = _write(tmp_path / "src.npz", images=rng.random((46, 1, 8, 8)).astype(np.float32), labels=labels)
    cs = build_calibration_set("npz", src, n=6)
    assert cs.class_counts() == {0: 3, 1: 3} and cs.meta["src_path"] == str(src.resolve())
    with pytest.raises(DataError, match="class 1 has only"):
        build_calibration_set("npz", src, n=20)


def test_save_refuses_existing_file(tmp_path, calib12):
    out = tmp_path / "c.npz"
    out.write_text("user file")
    with pytest.raises(QnasError, match="already exists"):
        calib12.save(out)
    assert out.read_text() == "user file"
    calib12.save(out, overwrite=True)
    assert len(CalibrationSet.load(out)) == 100
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temp files left


def test_cli_in_process(tmp_path, capsys):
    out = tmp_path / "c.npz"
    assert calib_main(["build", "--from", "digits", "--n", "50", "--resolution", "12", "--out", str(out)]) == 0
    assert CalibrationSet.load(out).resolution == (12, 12)
    before = out.read_bytes()
    assert calib_main(["build", "--from", "digits", "--n", "60", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qnas: error: ") and err.count("\n") == 1 and "--force" in err
    assert out.read_bytes() == before
    assert calib_main(["build", "--from", "digits", "--n", "60", "--out", str(out), "--force"]) == 0
    assert len(CalibrationSet.load(out)) == 60
    bad = tmp_path / "bad.npz"
    assert calib_main(["build", "--from", "digits", "--n", "5000", "--out", str(bad)]) == 2
    assert not bad.exists()
    assert calib_main(["show", str(out)]) == 0
    assert "per-class counts" in capsys.readouterr().out


def test_add_calib_parser_wires_into_another_cli(tmp_path):
    import argparse

    p = argparse.ArgumentParser(prog="qnas")
    sub = p.add_subparsers(dest="command", required=True)
    add_calib_parser(sub)
    out = tmp_path / "c.npz"
    args = p.parse_args(["calib", "build", "--from", "digits", "--n", "20", "--out", str(out)])
    assert args.func(args) == 0 and out.is_file()
    args = p.parse_args(["calib", "show", str(out)])
    assert args.func(args) == 0


def test_script_entry_points(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "c.npz"
    r = subprocess.run([sys.executable, "-m", "qnas.calib_data", "build", "--from", "digits", "--n", "40",
                        "--resolution", "12", "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert CalibrationSet.load(out).meta["n"] == 40
    script = Path(__file__).resolve().parents[2] / "calib_data" / "build_calib.py"
    junk = tmp_path / "junk.npz"
    junk.write_text("nope")
    r = subprocess.run([sys.executable, str(script), "show", str(junk)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("qnas: error:") and "not an npz file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
