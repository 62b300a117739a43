"""Streaming data sets (qnas.streaming) and the augmentation they use (qnas.augment)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from qnas.augment import center_crop_resize, hflip_maybe, pad_crop, random_resized_crop
from qnas.data import load_dataset, split
from qnas.errors import DataError
from qnas.streaming import open_stream

N = 120


@pytest.fixture(scope="module")
def raw():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (N, 3, 16, 16), dtype=np.uint8), rng.integers(0, 4, N)


@pytest.fixture(scope="module")
def sources(raw, tmp_path_factory):
    """The same images as an npz (NHWC), CIFAR-style binary records (32 px) and an image folder."""
    x, y = raw
    d = tmp_path_factory.mktemp("stream")
    np.savez(d / "imgs.npz", images=x.transpose(0, 2, 3, 1), labels=y)
    cifar = d / "cifar"
    cifar.mkdir()
    big = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)  # 32 px, as CIFAR records must be
    np.concatenate([y.astype(np.uint8)[:, None], big.reshape(N, -1)], 1).tofile(cifar / "data_batch_1.bin")
    folder = d / "folder"
    for i in range(N):
        (folder / f"c{y[i]}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i].transpose(1, 2, 0)).save(folder / f"c{y[i]}" / f"{i:04d}.png")
    return {"npz": d / "imgs.npz", "cifar10": cifar, "imagefolder": folder}


@pytest.mark.parametrize("kind", ["npz", "cifar10", "imagefolder"])
def test_evaluation_view_equals_the_in_memory_loader(kind, sources):
    kw = {"size": 16} if kind == "imagefolder" else {}
    streamed = open_stream(kind, sources[kind], **kw)
    whole = load_dataset(kind, sources[kind], **kw)
    assert len(streamed) == len(whole) and streamed.num_classes == whole.num_classes
    assert torch.equal(streamed.labels, whole.labels)
    np.testing.assert_allclose(streamed.mean, whole.mean, rtol=1e-6)
    np.testing.assert_allclose(streamed.std, whole.std, rtol=1e-6)
    assert torch.allclose(streamed.images, whole.images, atol=1e-5)
    batches = list(streamed.loader(32, shuffle=False, workers=0))
    assert torch.allclose(torch.cat([b[0] for b in batches]), whole.images, atol=1e-5)


def test_split_and_subset_work_on_a_stream(sources):
    ds = open_stream("npz", sources["npz"])
    parts = split(ds, seed=0)
    assert len(parts.train) + len(parts.val) + len(parts.test) == N
    whole = split(load_dataset("npz", sources["npz"]), seed=0)
    assert torch.equal(parts.val.labels, whole.val.labels)
    assert torch.allclose(parts.val.images, whole.val.images, atol=1e-5)
    mask = np.zeros(N, dtype=bool)
    mask[::3] = True
    assert len(ds.subset(mask)) == mask.sum()


def test_what_workers_receive_holds_no_images(sources):
    """Memory must not grow with the data set: the pickled data set carries paths, offsets, labels."""
    ds = open_stream("cifar10", sources["cifar10"])
    assert len(pickle.dumps(ds)) < 4 * N * 8 + 4096  # labels + indices, not 3*32*32 bytes per image


def test_same_seed_same_batches_whatever_the_worker_count(sources):
    ds = open_stream("cifar10", sources["cifar10"])

    def run(workers):
        return list(ds.loader(16, True, seed=3, augment=True, workers=workers, resolutions=[24, 28, 32]))

    a, b = run(0), run(2)
    assert len(a) == len(b) == -(-N // 16)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    sizes = {x.shape[-1] for x, _ in a}
    assert sizes <= {24, 28, 32} and len(sizes) > 1  # drawn per batch (8 batches, 3 choices)
    plain = torch.cat([x for x, _ in ds.loader(N, False, workers=0)])
    again = list(ds.loader(16, True, seed=3, augment=False, workers=0))
    assert not torch.equal(torch.cat([x for x, _ in again]), plain)  # shuffled
    assert len(list(ds.loader(16, True, seed=4, workers=0, drop_last=True))) == N // 16


@pytest.mark.parametrize("world,workers", [(2, 0), (3, 2)])
def test_a_ranks_shard_is_its_slice_of_the_global_batches(sources, world, workers):
    """Under torchrun each rank decodes only its slice: same order, same per-batch resolution and the
    same augmentation of every image as the single-process batch (augmentation is seeded per image)."""
    from qnas.quant.distributed import DistContext, global_batch_sizes

    ds = open_stream("cifar10", sources["cifar10"])
    kw = dict(seed=3, augment=True, resolutions=[24, 28, 32])
    loader = ds.loader(32, True, workers=0, **kw)
    glob = [b for _ in range(2) for b in loader]  # two epochs (the plan's epoch counter moves on)
    for r in range(world):
        sharded = ds.loader(32, True, workers=workers, shard=DistContext(r, world), **kw)
        assert global_batch_sizes(sharded) == [32, 32, 32, 24]
        mine = [b for _ in range(2) for b in sharded]
        assert len(mine) == len(glob)
        for (gx, gy), (x, y) in zip(glob, mine):
            assert torch.equal(y, torch.tensor_split(gy, world)[r])
            assert torch.equal(x, torch.tensor_split(gx, world)[r])


def test_augmentation_changes_training_views_only(sources):
    ds = open_stream("cifar10", sources["cifar10"])
    aug = next(iter(ds.loader(N, False, seed=0, augment=True, workers=0)))[0]
    plain = next(iter(ds.loader(N, False, seed=0, augment=False, workers=0)))[0]
    assert aug.shape == plain.shape
    assert not torch.allclose(aug, plain)


def test_augment_primitives():
    gen = torch.Generator().manual_seed(0)
    img = torch.arange(3 * 40 * 50, dtype=torch.float32).view(3, 40, 50)
    assert random_resized_crop(img, 24, gen).shape == (3, 24, 24)
    crop = pad_crop(img[:, :32, :32], 32, gen)
    assert crop.shape == (3, 32, 32)
    nonzero = crop[0] != 0  # a shifted copy: every non-padding value comes from the image
    assert bool(torch.isin(crop[0][nonzero], img[0, :32, :32]).all())
    assert center_crop_resize(img, 35).shape == (3, 35, 35)
    flipped = [bool(torch.equal(hflip_maybe(img, gen), img.flip(-1))) for _ in range(40)]
    assert any(flipped) and not all(flipped)  # a coin per image

def test_bad_streams_are_one_line_errors(sources, tmp_path):
    x = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    np.savez_compressed(tmp_path / "c.npz", images=x, labels=np.arange(4) % 2)
    with pytest.raises(DataError, match="compressed"):
        open_stream("npz", tmp_path / "c.npz")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data_batch_1.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="not a positive multiple"):
        open_stream("cifar10", tmp_path / "bad")
    with pytest.raises(DataError, match="needs size"):
        open_stream("imagefolder", sources["imagefolder"])
    with pytest.raises(DataError, match="cannot stream"):
        open_stream("digits", tmp_path)
    ds = open_stream("npz", sources["npz"])
    with pytest.raises(DataError, match="batch_size"):
        ds.loader(0, False)
    huge = ds.at_resolution(4000)
    with pytest.raises(DataError, match="GiB"):
        _ = huge.images
    with pytest.raises(DataError, match="out of range"):
        ds.subset([N + 5])


def test_supernet_trains_on_a_streamed_data_set_and_the_cli_takes_stream(sources, tmp_path):
    """Elastic-resolution supernet training reads each batch once at the largest resolution and resizes it
    per subnet; the same data through --stream on the CLI."""
    import subprocess
    import sys

    from qnas.searching import prepare_data
    from qnas.space import SearchSpace, SpaceConfig, StageConfig
    from qnas.streaming import StreamingImageDataset
    from qnas.supernet.sampling import progressive_phases
    from qnas.supernet.supernet import Supernet
    from qnas.supernet.train import SupernetTrainConfig, train_supernet

    space = SearchSpace(SpaceConfig(in_channels=3, num_classes=4, resolutions=(8, 12), widths=(0.5, 1.0),
                                    stem_channels=8, stages=(StageConfig(8, (1, 2), 1), StageConfig(16, (1, 2), 2)),
                                    kernels=(3, 5), expands=(2, 4)))
    splits = prepare_data("npz", str(sources["npz"]), seed=0, stream=True, space=space)
    assert isinstance(splits.train, StreamingImageDataset)
    torch.manual_seed(0)
    net = Supernet(space)
    cfg = SupernetTrainConfig(phases=progressive_phases(1), batch_size=16, n_random=1, progress=False,
                              eval_bn_batches=0, lr=5e-3)
    hist = train_supernet(net, splits, cfg)
    assert len(hist) == 4 and all(np.isfinite(h["loss"]) for h in hist)
    import yaml

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space.to_dict()))
    out = tmp_path / "sn"
    cmd = [sys.executable, "-m", "qnas", "supernet", "train", "--data", "npz", "--data-path", str(sources["npz"]),
           "--space", str(tmp_path / "space.yaml"), "--stream", "--epochs", "1", "--batch-size", "32", "--out", str(out), "--no-progress"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-500:]
    assert (out / "supernet.pt").is_file()
