"""Tests for qnas.data: loaders, validation, resizing and splitting."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from qnas.data import (
    ImageDataset,
    Splits,
    load_cifar10,
    load_dataset,
    load_digits,
    load_image_folder,
    load_npz,
    normalize,
    split,
)
from qnas.errors import DataError


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_digits()


# ----------------------------------------------------------------- digits --
def test_digits_shape_labels_and_normalization(digits):
    assert digits.images.shape == (1797, 1, 8, 8)
    assert digits.images.dtype == torch.float32
    assert digits.labels.dtype == torch.int64
    assert sorted(digits.labels.unique().tolist()) == list(range(10))
    assert digits.num_classes == 10 and digits.channels == 1 and len(digits) == 1797
    assert digits.name == "digits"
    assert abs(float(digits.images.mean())) < 1e-4
    assert abs(float(digits.images.std(unbiased=False)) - 1.0) < 1e-3
    # mean/std recorded are those of the raw [0, 1] pixels
    assert len(digits.mean) == 1 and 0.2 < digits.mean[0] < 0.4
    assert len(digits.std) == 1 and 0.3 < digits.std[0] < 0.5


def test_normalize_floors_std_and_checks_channels():
    x = torch.full((4, 2, 3, 3), 5.0)
    x[:, 1] = torch.arange(4.0).view(4, 1, 1)
    out, mean, std = normalize(x)
    assert mean[0] == pytest.approx(5.0) and std[0] == pytest.approx(1e-6)
    assert torch.allclose(out[:, 0], torch.zeros(4, 3, 3))
    assert mean[1] == pytest.approx(1.5)
    assert float(out[:, 1].mean()) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(DataError):
        normalize(x, mean=(0.0,), std=(1.0,))


def test_at_resolution(digits):
    up = digits.at_resolution(24)
    assert up.images.shape == (1797, 1, 24, 24)
    assert torch.equal(up.labels, digits.labels)
    assert up.mean == digits.mean and up.std == digits.std
    assert digits.at_resolution(8) is digits
    down = up.at_resolution(8)
    assert down.images.shape == (1797, 1, 8, 8)
    # resizing up and back down stays close to the original
    assert float((down.images - digits.images).abs().mean()) < 0.5
    with pytest.raises(DataError):
        digits.at_resolution(0)


def test_subset_and_loader(digits):
    sub = digits.subset([0, 5, 7])
    assert len(sub) == 3 and torch.equal(sub.labels, digits.labels[[0, 5, 7]])
    mask = digits.labels == 3
    assert len(digits.subset(mask)) == int(mask.sum())
    a = [y.tolist() for _, y in sub.loader(2, shuffle=False)]
    assert a == [digits.labels[[0, 5]].tolist(), digits.labels[[7]].tolist()]
    l1 = torch.cat([y for _, y in digits.loader(64, shuffle=True, seed=3)])
    l2 = torch.cat([y for _, y in digits.loader(64, shuffle=True, seed=3)])
    l3 = torch.cat([y for _, y in digits.loader(64, shuffle=True, seed=4)])
    assert torch.equal(l1, l2) and not torch.equal(l1, l3)
    assert not torch.equal(l1, digits.labels)
    with pytest.raises(DataError):
        digits.subset([5000])
    with pytest.raises(DataError):
        digits.loader(0, shuffle=False)


def test_dataset_validates_labels():
    with pytest.raises(DataError) as e:
        ImageDataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 12]), 10, "t", (0.0,), (1.0,))
    assert "labels out of range [0, 10): found 12" in _one_line(e)
    with pytest.raises(DataError):
        ImageDataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1]), 2, "t", (0.0,), (1.0,))
    with pytest.raises(DataError):
        ImageDataset(torch.zeros(3, 2, 2), torch.tensor([0, 1, 0]), 2, "t", (0.0,), (1.0,))
    with pytest.raises(DataError):
        ImageDataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 0, 0]), 1, "t", (0.0,), (1.0,))


# ------------------------------------------------------------------ split --
def test_split_deterministic_disjoint_stratified(digits):
    s1 = split(digits, seed=0)
    s2 = split(digits, seed=0)
    s3 = split(digits, seed=1)
    assert isinstance(s1, Splits)
    n = len(digits)
    assert len(s1.train) + len(s1.val) + len(s1.test) == n
    assert abs(len(s1.test) - 0.2 * n) <= 10 and abs(len(s1.val) - 0.15 * n) <= 10
    for a, b in ((s1.train, s2.train), (s1.val, s2.val), (s1.test, s2.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(s1.test.images, s3.test.images)

    # disjoint and covering: identify rows by their (unique-enough) pixel bytes + label
    def keys(d):
        return [(bytes(im.numpy().tobytes()), int(y)) for im, y in zip(d.images, d.labels)]

    all_keys = keys(digits)
    parts = [keys(s1.train), keys(s1.val), keys(s1.test)]
    from collections import Counter
    assert Counter(parts[0]) + Counter(parts[1]) + Counter(parts[2]) == Counter(all_keys)
    for part in (s1.train, s1.val, s1.test):
        assert sorted(part.labels.unique().tolist()) == list(range(10))
    # per-class proportions track the whole set
    for c in range(10):
        total = int((digits.labels == c).sum())
        assert abs(int((s1.test.labels == c).sum()) - 0.2 * total) <= 1


def test_split_unstratified_and_bad_fractions(digits):
    s = split(digits, seed=5, stratify=False)
    assert len(s.train) + len(s.val) + len(s.test) == len(digits)
    for kw in ({"val_frac": 0.0}, {"test_frac": 1.0}, {"val_frac": 0.5, "test_frac": 0.5},
               {"val_frac": -0.1}, {"test_frac": float("nan")}):
        with pytest.raises(DataError) as e:
            split(digits, **kw)
        _one_line(e)
    tiny = digits.subset([0, 1])
    with pytest.raises(DataError):
        split(tiny)


# ------------------------------------------------------------ imagefolder --
def _png(path, size, color, mode="RGB"):
    Image.new(mode, size, color).save(path)


def test_image_folder_loads_rgb(tmp_path):
    for cls, color in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png", (6, 5), color)
    (tmp_path / "cat" / "notes.txt").write_text("ignored")
    ds = load_image_folder(tmp_path)
    assert ds.images.shape == (6, 3, 5, 6)
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.num_classes == 2 and ds.name.startswith("imagefolder:")
    # de-normalize: cat is pure red, dog pure blue
    raw = ds.images * torch.tensor(ds.std).view(1, 3, 1, 1) + torch.tensor(ds.mean).view(1, 3, 1, 1)
    assert torch.allclose(raw[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-4)
    assert torch.allclose(raw[5, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-4)
    same = load_dataset("imagefolder", str(tmp_path))
    assert torch.equal(same.images, ds.images)


def test_image_folder_gray_and_resize(tmp_path):
    for cls, v in (("a", 10), ("b", 200)):
        (tmp_path / cls).mkdir()
        _png(tmp_path / cls / "x.png", (4, 4), v, mode="L")
        _png(tmp_path / cls / "y.bmp", (8, 8), v, mode="L")
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path)
    assert "size=" in _one_line(e)
    ds = load_image_folder(tmp_path, size=6)
    assert ds.images.shape == (4, 1, 6, 6)
    assert ds.labels.tolist() == [0, 0, 1, 1]
    # one RGB image makes the whole set RGB
    _png(tmp_path / "b" / "z.png", (6, 6), (1, 2, 3))
    assert load_image_folder(tmp_path, size=6).channels == 3


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path / "missing")
    assert "not found" in _one_line(e)
    with pytest.raises(DataError):
        load_image_folder(tmp_path)  # empty folder
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _png(tmp_path / "a" / "1.png", (4, 4), (0, 0, 0))
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path)  # class b has no images
    assert "b" in _one_line(e)
    (tmp_path / "b" / "bad.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path)
    assert "corrupt" in _one_line(e)
    (tmp_path / "b" / "bad.png").unlink()
    _png(tmp_path / "b" / "ok.png", (4, 4), (9, 9, 9))
    import shutil
    shutil.rmtree(tmp_path / "b")
    with pytest.raises(DataError):
        load_image_folder(tmp_path)  # only one class


# ---------------------------------------------------------------- cifar10 --
def _cifar_records(labels, seed=0):
    rng = np.random.default_rng(seed)
    pix = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    recs = np.concatenate([np.asarray(labels, dtype=np.uint8)[:, None], pix], axis=1)
    return recs, pix.reshape(-1, 3, 32, 32)


def test_cifar10_binary(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    r1, p1 = _cifar_records([3, 0, 9], seed=1)
    r2, p2 = _cifar_records([1, 1], seed=2)
    rt, pt = _cifar_records([7, 2], seed=3)
    r1[0, 1 + 1024 + 5 * 32 + 7] = 250  # green channel, row 5, col 7 of record 0
    p1[0, 1, 5, 7] = 250
    r1.tofile(d / "data_batch_1.bin")
    r2.tofile(d / "data_batch_2.bin")
    rt.tofile(d / "test_batch.bin")

    tr = load_cifar10(tmp_path)  # parent directory with cifar-10-batches-bin inside
    assert tr.images.shape == (5, 3, 32, 32)
    assert tr.labels.tolist() == [3, 0, 9, 1, 1]
    assert tr.num_classes == 10
    raw = tr.images * torch.tensor(tr.std).view(1, 3, 1, 1) + torch.tensor(tr.mean).view(1, 3, 1, 1)
    expect = torch.from_numpy(np.concatenate([p1, p2]).astype(np.float32) / 255.0)
    assert torch.allclose(raw, expect, atol=1e-4)
    assert raw[0, 1, 5, 7] == pytest.approx(250 / 255, abs=1e-4)

    te = load_dataset("cifar10", str(d), train=False)
    assert te.labels.tolist() == [7, 2] and len(te) == 2

    with open(d / "data_batch_2.bin", "ab") as f:
        f.write(b"\x00" * 10)
    with pytest.raises(DataError) as e:
        load_cifar10(d)
    assert "3073" in _one_line(e)


def test_cifar10_errors(tmp_path):
    with pytest.raises(DataError):
        load_cifar10(tmp_path)  # no batches
    with pytest.raises(DataError):
        load_cifar10(tmp_path, train=False)
    r, _ = _cifar_records([0, 12])
    r.tofile(tmp_path / "data_batch_1.bin")
    with pytest.raises(DataError) as e:
        load_cifar10(tmp_path)
    assert "found 12" in _one_line(e)


# -------------------------------------------------------------------- npz --
def test_npz_nhwc_uint8_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(6, 5, 7, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    p = tmp_path / "d.npz"
    np.savez(p, images=imgs, labels=labels)
    ds = load_npz(p)
    assert ds.images.shape == (6, 3, 5, 7)
    assert ds.labels.tolist() == labels.tolist() and ds.num_classes == 3
    raw = ds.images * torch.tensor(ds.std).view(1, 3, 1, 1) + torch.tensor(ds.mean).view(1, 3, 1, 1)
    expect = torch.from_numpy(imgs.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    assert torch.allclose(raw, expect, atol=1e-4)
    assert ds.name == f"npz:{p}"


def test_npz_nchw_float_and_nhw(tmp_path):
    imgs = np.random.default_rng(1).normal(size=(4, 1, 6, 6)).astype(np.float32)
    p = tmp_path / "f.npz"
    np.savez(p, x=imgs, y=np.array([0, 1, 1, 0]), num_classes=np.int64(5))
    ds = load_npz(p)
    assert ds.images.shape == (4, 1, 6, 6) and ds.num_classes == 5
    raw = ds.images * ds.std[0] + ds.mean[0]
    assert torch.allclose(raw, torch.from_numpy(imgs), atol=1e-5)
    p2 = tmp_path / "g.npz"
    np.savez(p2, images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, 1, 0]))
    assert load_dataset("npz", str(p2)).images.shape == (3, 1, 4, 4)


def test_npz_validation(tmp_path):
    img = np.zeros((3, 1, 4, 4), np.float32)

    def save(name, **arrays):
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    with pytest.raises(DataError) as e:
        load_npz(save("a.npz", images=img, labels=np.array([0, 1, 12]), num_classes=np.int64(10)))
    assert "labels out of range [0, 10): found 12" in _one_line(e)
    with pytest.raises(DataError) as e:
        load_npz(save("b.npz", images=img, labels=np.array([0, -1, 1])))
    assert "out of range" in _one_line(e)
    bad = img.copy()
    bad[1, 0, 2, 2] = np.nan
    with pytest.raises(DataError) as e:
        load_npz(save("c.npz", images=bad, labels=np.array([0, 1, 0])))
    assert "NaN" in _one_line(e)
    with pytest.raises(DataError):
        load_npz(save("d.npz", images=img, labels=np.array([0, 1])))  # length mismatch
    with pytest.raises(DataError):
        load_npz(save("e.npz", images=img, labels=np.array([[0], [1], [0]])))  # 2-D labels
    with pytest.raises(DataError):
        load_npz(save("f.npz", images=np.zeros((3, 4), np.float32), labels=np.array([0, 1, 0])))
    with pytest.raises(DataError):
        load_npz(save("g.npz", images=img, labels=np.array([0, 0, 0])))  # one class
    with pytest.raises(DataError) as e:
        load_npz(save("h.npz", pixels=img, labels=np.array([0, 1, 0])))
    assert "images" in _one_line(e)
    with pytest.raises(DataError) as e:
        load_npz(tmp_path / "nope.npz")
    assert "not found" in _one_line(e)
    with pytest.raises(DataError) as e:  # refused before a 10**12-class classifier is built
        load_npz(save("i.npz", images=img, labels=np.array([0, 1, 10**12])))
    assert "at most 100000 are supported" in _one_line(e)


def test_npz_rejects_non_npz_and_pickles(tmp_path):
    txt = tmp_path / "plain.npz"
    txt.write_text("hello, not a zip file\n")
    with pytest.raises(DataError) as e:
        load_npz(txt)
    assert "not an npz file" in _one_line(e)

    npy = tmp_path / "arr.npy"
    np.save(npy, np.zeros((2, 2)))
    with pytest.raises(DataError):
        load_npz(npy)

    class Boom:
        def __reduce__(self):
            return (_mark_unpickled, ())

    _UNPICKLED.clear()
    objs = np.empty(3, dtype=object)
    objs[:] = [Boom(), Boom(), Boom()]
    p = tmp_path / "obj.npz"
    np.savez(p, images=objs, labels=np.array([0, 1, 0]))
    with pytest.raises(DataError) as e:
        load_npz(p)
    _one_line(e)
    assert _UNPICKLED == []

    pk = tmp_path / "pick.npz"
    pk.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(DataError):
        load_npz(pk)
    assert _UNPICKLED == []


_UNPICKLED: list[int] = []


def _mark_unpickled():
    _UNPICKLED.append(1)
    return None


# ----------------------------------------------------------- load_dataset --
def test_load_dataset_dispatch_and_errors(digits):
    ds = load_dataset("digits")
    assert torch.equal(ds.images, digits.images)
    with pytest.raises(DataError) as e:
        load_dataset("mnist")
    msg = _one_line(e)
    for k in ("digits", "imagefolder", "cifar10", "npz"):
        assert k in msg
    with pytest.raises(DataError) as e:
        load_dataset("npz")
    assert "path" in _one_line(e)
    with pytest.raises(DataError):
        load_dataset("imagefolder", "/definitely/not/here")
    with pytest.raises(DataError):
        load_dataset("digits", size=8)


def test_dataset_kinds_are_defined_once():
    """qnas.data, the CLI's --data / --from choices and the calibration builder read one torch-free list."""
    import qnas.data
    from qnas.cli import build_parser
    from qnas.dataset_kinds import DATASET_KINDS, needs_path, path_kinds

    assert qnas.data.DATASET_KINDS is DATASET_KINDS
    assert tuple(qnas.data._LOADERS) == DATASET_KINDS
    assert not needs_path("digits") and path_kinds() == ("imagefolder", "cifar10", "npz")
    parser = build_parser()
    for argv in (["search", "--data", "nope"], ["finish", "qat", "RUN", "--data", "nope"],
                 ["supernet", "train", "--out", "x", "--data", "nope"], ["calib", "build", "--from", "nope", "--out", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    for kind in DATASET_KINDS:
        assert parser.parse_args(["search", "--data", kind]).data == kind
