"""One process of the data-parallel test (tests/qnas/test_distributed.py); not a test module itself.

Run as ``python ddp_worker.py OUT`` (a single process) or under
``python -m torch.distributed.run --nproc_per_node 2 ddp_worker.py OUT`` (gloo on the CPU). It trains
a tiny supernet (2 epochs, checkpointed), the same supernet interrupted after epoch 1 and resumed,
a short QAT run, a float model without batch norm and the supernet on a streamed data set; rank 0
writes the final states to ``OUT/result.pt``, each rank writes ``OUT/rank{R}.json`` (how many
checkpoints it wrote) and ``OUT/batches{R}.pt``: what its loaders yield (under torchrun its slices
of the global batches, in a single process the global batches)."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

from qnas.arch import Arch, Block  # noqa: E402
from qnas.data import Splits, load_digits, split  # noqa: E402
from qnas.quant import distributed as qdist  # noqa: E402
from qnas.quant.build import build_model  # noqa: E402
from qnas.quant.configs import QATConfig  # noqa: E402
from qnas.quant.qat import qat  # noqa: E402
from qnas.quant.train import TrainConfig, train  # noqa: E402
from qnas.space import SearchSpace, SpaceConfig, StageConfig  # noqa: E402
from qnas.streaming import open_stream  # noqa: E402
from qnas.supernet import Phase, Supernet, SupernetTrainConfig, train_supernet  # noqa: E402
import qnas.supernet.train as supernet_train  # noqa: E402


class Interrupted(Exception):
    pass


def tiny_space() -> SearchSpace:
    return SearchSpace(SpaceConfig(
        resolutions=(8,), widths=(1.0,), stem_channels=8,
        stages=(StageConfig(8, (1, 2), 1), StageConfig(16, (1,), 2)),
        kernels=(3,), expands=(2,)))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    saves = {"count": 0}
    real_save = supernet_train.save_checkpoint

    def counting_save(*args, **kwargs):
        saves["count"] += 1
        return real_save(*args, **kwargs)

    supernet_train.save_checkpoint = counting_save
    full = split(load_digits(), seed=0)
    splits = Splits(full.train.subset(slice(0, 96)), full.val.subset(slice(0, 64)), full.test)
    space = tiny_space()
    cfg = dict(phases=(Phase("all", frozenset({"depth", "bits"}), 2),), batch_size=32, n_random=1, progress=False,
               eval_bn_batches=1, lr=5e-3, seed=3)

    # 1. two epochs, uninterrupted
    net = Supernet.from_seed(space, 3)
    hist = train_supernet(net, splits, SupernetTrainConfig(checkpoint_dir=str(out / "full"), **cfg))
    # 2. the same run killed after epoch 1 and resumed
    killed = Supernet.from_seed(space, 3)

    def stop(entry: dict) -> None:
        if entry["epoch"] == 1:
            raise Interrupted

    try:
        train_supernet(killed, splits, SupernetTrainConfig(checkpoint_dir=str(out / "resumed"), **cfg), on_epoch=stop)
    except Interrupted:
        pass
    resumed = Supernet.from_seed(space, 3)
    train_supernet(resumed, splits, SupernetTrainConfig(checkpoint_dir=str(out / "resumed"), resume=True, **cfg))

    # 3. QAT of a small arch (scratch), best epoch kept, state file written by rank 0
    arch = Arch(8, 1.0, ((Block(3, 2, (8, 8, 8), (8, 8, 8)), Block(3, 2, (4, 4, 4), (8, 8, 8))),
                         (Block(3, 2, (8, 8, 8), (8, 8, 8)),)))
    torch.manual_seed(0)
    model = build_model(space, arch)
    qcfg = QATConfig(epochs=3, lr=3e-3, seed=0, progress=False, freeze_bn_fraction=None)
    tr = splits.train.at_resolution(8).loader(32, True, 0)
    va = splits.val.at_resolution(8).loader(64, False)
    res = qat(model, tr, va, qcfg, state_path=out / "qat-state.pt")

    # 4. a float model without batch norm: here world size 1 and 2 differ only by float rounding
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    train(linear, splits.train.loader(35, True, 0), splits.val.loader(64, False),  # uneven batches: 35, 35, 26
          TrainConfig(epochs=2, lr=1e-2, seed=0, progress=False, keep_best=True))

    # 5. what this rank's loaders yield: an in-memory loader re-made as train() re-makes it, and a
    #    streamed one with augmentation and elastic resolution (65 images: the last batch of 16 has 1,
    #    so rank 1's slice of it is empty), each for two epochs; one streamed loader in a worker process
    ctx = qdist.context()
    shard = ctx if ctx.enabled else None
    rng = np.random.default_rng(0)
    npz = out / f"stream{ctx.rank}.npz"  # the same file for every rank
    np.savez(npz, images=rng.integers(0, 256, (65, 1, 8, 8), dtype=np.uint8), labels=rng.integers(0, 10, 65),
             num_classes=np.int64(10))
    stream = open_stream("npz", npz)
    mem = qdist.shard_loader(splits.train.loader(35, True, 0), ctx)
    aug = stream.loader(16, True, seed=5, augment=True, workers=0, resolutions=[6, 8], shard=shard)
    in_worker = stream.loader(16, True, seed=6, augment=True, workers=1, shard=shard)
    torch.save({"memory": [list(b) for _ in range(2) for b in mem],
                "stream": [list(b) for _ in range(2) for b in aug],
                "stream_worker": [list(b) for b in in_worker]}, out / f"batches{ctx.rank}.pt")

    # 6. the supernet on the streamed data set (each rank decodes and augments its slices only)
    streamed = Supernet.from_seed(space, 3)
    ssplits = split(stream, seed=0)
    shist = train_supernet(streamed, ssplits, SupernetTrainConfig(**{**cfg, "eval_bn_batches": 0, "batch_size": 16}))

    (out / f"rank{ctx.rank}.json").write_text(json.dumps({
        "rank": ctx.rank, "world_size": ctx.world_size, "supernet_saves": saves["count"],
        "history": hist, "stream_history": shist, "qat_best_epoch": res.best_epoch,
        "qat_val": [e.val_acc for e in res.epochs]}))
    if ctx.is_main:
        torch.save({"supernet": net.state_dict(), "resumed": resumed.state_dict(), "qat": model.state_dict(),
                    "linear": linear.state_dict(), "stream": streamed.state_dict()},
                   out / "result.pt")
    qdist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
