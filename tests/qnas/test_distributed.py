"""Data-parallel training under torchrun (gloo on the CPU): world size 1 vs 2, rank-0 checkpoints, resume,
each rank reading only its slice of the global batches.

One run of ``ddp_worker.py`` as a single process and one as two processes launched by
``python -m torch.distributed.run``; both train a tiny supernet (2 epochs, also killed after one
and resumed), a short scratch QAT, a float model without batch norm and the supernet on a streamed
data set, and record what their loaders yield. The sharded batch sampler itself is tested without
processes (a fake rank and world size) at the end.

Tolerances (measured on this setup, README "Multi-GPU and multi-process training"): without batch
norm the two world sizes agree to float rounding (relative 1e-7; asserted 1e-5). With batch norm each
rank normalises with its own half of the batch (``SyncBatchNorm`` needs CUDA in torch 2.13) and
Brevitas' activation scales start from rank 0's half: the weights differ by 5 % (supernet),
7 % (QAT from scratch) and 9 % (supernet on the streamed set, slices of 8 images) relative L2 after
these few steps, the supernet's mean loss by at most 0.9 %; asserted with margin (15 % and 3 %).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from qnas.data import load_digits
from qnas.quant import distributed as qdist
from qnas.quant.distributed import DistContext, ShardedBatchSampler

WORKER = Path(__file__).with_name("ddp_worker.py")


def _run(args: list[str], out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, *args, str(WORKER), str(out)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _rel_l2(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    num = sum(float((a[k] - b[k]).float().norm() ** 2) for k in a if torch.is_floating_point(a[k]))
    den = sum(float(a[k].float().norm() ** 2) for k in a if torch.is_floating_point(a[k]))
    return (num / den) ** 0.5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    one, two = tmp_path_factory.mktemp("ws1"), tmp_path_factory.mktemp("ws2")
    _run([], one)
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], two)
    return one, two


def test_world_size_2_matches_world_size_1_within_tolerance(runs):
    one, two = runs
    a = torch.load(one / "result.pt", weights_only=True)
    b = torch.load(two / "result.pt", weights_only=True)
    assert _rel_l2(a["linear"], b["linear"]) < 1e-5  # no batch norm: the same up to float rounding
    assert _rel_l2(a["supernet"], b["supernet"]) < 0.15
    assert _rel_l2(a["qat"], b["qat"]) < 0.15
    assert _rel_l2(a["stream"], b["stream"]) < 0.15
    h1 = json.loads((one / "rank0.json").read_text())["history"]
    h2 = json.loads((two / "rank0.json").read_text())["history"]
    for e1, e2 in zip(h1, h2):
        assert abs(e1["loss"] - e2["loss"]) < 0.03 * e1["loss"]
    s1 = json.loads((one / "rank0.json").read_text())["stream_history"]
    s2 = json.loads((two / "rank0.json").read_text())["stream_history"]
    assert len(s1) == len(s2) == 2
    for e1, e2 in zip(s1, s2):
        assert abs(e1["loss"] - e2["loss"]) < 0.03 * e1["loss"]


def test_only_rank_0_writes_checkpoints_and_ranks_agree(runs):
    _, two = runs
    r0 = json.loads((two / "rank0.json").read_text())
    r1 = json.loads((two / "rank1.json").read_text())
    assert (r0["world_size"], r1["world_size"]) == (2, 2)
    assert r0["supernet_saves"] == 4 and r1["supernet_saves"] == 0  # 2 epochs + 1 before the kill + 1 resumed
    metrics = lambda r: [{k: v for k, v in e.items() if k != "seconds"} for e in r["history"]]  # noqa: E731
    assert metrics(r0) == metrics(r1) and r0["qat_val"] == r1["qat_val"]  # every rank saw the same figures
    assert (two / "full" / "supernet.pt").is_file() and (two / "qat-state.pt").is_file()
    assert not list(two.rglob("*.tmp"))


def test_a_resumed_distributed_run_equals_the_uninterrupted_one(runs):
    for d in runs:
        r = torch.load(d / "result.pt", weights_only=True)
        assert all(torch.equal(r["supernet"][k], r["resumed"][k]) for k in r["supernet"])


def test_each_rank_reads_exactly_its_slices_of_the_global_batches(runs):
    """Under torchrun each rank's loaders yield the tensor_split slices of the single process's batches:
    in-memory (re-made as train() does), streamed with augmentation and elastic resolution, in a worker."""
    one, two = runs
    whole = torch.load(one / "batches0.pt", weights_only=True)
    ranks = [torch.load(two / f"batches{r}.pt", weights_only=True) for r in (0, 1)]
    assert set(whole) == {"memory", "stream", "stream_worker"}
    empty = 0
    for key, batches in whole.items():
        assert len(batches) == len(ranks[0][key]) == len(ranks[1][key])
        for b, (x, y) in enumerate(batches):
            for r in (0, 1):
                xr, yr = ranks[r][key][b]
                assert torch.equal(yr, torch.tensor_split(y, 2)[r]), (key, b, r)
                if len(yr):
                    assert torch.equal(xr, torch.tensor_split(x, 2)[r]), (key, b, r)
                else:
                    empty += 1
    assert [len(y) for _, y in whole["memory"]] == [35, 35, 26] * 2
    assert {x.shape[-1] for x, _ in whole["stream"]} == {6, 8}  # the resolution drawn per global batch
    assert empty == 3  # the streamed last batch of 1 image leaves rank 1 nothing (2 epochs + the worker loader)


# ---- the sampler without processes: a fake rank and world size ----------------------------------------------
@pytest.mark.parametrize("n,batch,drop_last,world", [(10, 4, False, 2), (10, 4, True, 3), (97, 32, False, 3),
                                                     (5, 8, False, 4), (64, 16, False, 1)])
def test_sharded_batch_sampler_slices_the_same_global_batches(n, batch, drop_last, world):
    def batches(seed: int) -> BatchSampler:
        return BatchSampler(RandomSampler(range(n), generator=torch.Generator().manual_seed(seed)), batch, drop_last)

    g = batches(7)
    glob = list(g) + list(g)  # two epochs: the second draws the next permutation
    shards = [ShardedBatchSampler(batches(7), r, world) for r in range(world)]
    per_rank = [list(s) + list(s) for s in shards]
    assert all(len(s) == len(glob) // 2 and len(p) == len(glob) for s, p in zip(shards, per_rank))
    assert shards[0].global_sizes() == [len(b) for b in glob[:len(glob) // 2]]
    for b, gb in enumerate(glob):
        cut = torch.tensor_split(torch.tensor(gb), world)
        for r in range(world):
            assert per_rank[r][b] == cut[r].tolist()
            assert qdist.shard_bounds(len(gb), r, world) == (sum(len(c) for c in cut[:r]),
                                                              sum(len(c) for c in cut[:r + 1]))
        assert sum((per_rank[r][b] for r in range(world)), []) == gb


def test_sharded_batch_sampler_refuses_bad_ranks_and_unknown_batch_lengths():
    bs = BatchSampler(SequentialSampler(range(8)), 4, False)
    with pytest.raises(ValueError, match="rank"):
        ShardedBatchSampler(bs, 2, 2)
    with pytest.raises(ValueError, match="batch"):
        ShardedBatchSampler([[0, 1], [2]], 0, 2)


def test_in_memory_loader_shard_yields_the_ranks_slices_over_epochs():
    ds = load_digits().subset(slice(0, 97))
    world = 3
    glob_loader = ds.loader(32, True, seed=4)
    glob = [list(b) for _ in range(2) for b in glob_loader]  # two epochs from one loader (one generator)
    for r in range(world):
        loader = ds.loader(32, True, seed=4, shard=DistContext(r, world))
        assert qdist.global_batch_sizes(loader) == [32, 32, 32, 1] and len(loader) == 4
        mine = [list(b) for _ in range(2) for b in loader]
        for (gx, gy), (x, y) in zip(glob, mine, strict=True):
            assert torch.equal(y, torch.tensor_split(gy, world)[r])
            assert len(y) == 0 or torch.equal(x, torch.tensor_split(gx, world)[r])
    # the training loops re-make a caller's loader: same generator object (QAT saves its state), same order
    plain = ds.loader(32, True, seed=4)
    remade = qdist.shard_loader(plain, DistContext(1, 2))
    assert remade.generator is plain.generator and qdist.global_batch_sizes(plain) is None
    assert qdist.shard_loader(remade, DistContext(1, 2)) is remade
    with pytest.raises(ValueError, match="rank 1 of 2"):
        qdist.shard_loader(remade, DistContext(0, 2))
    assert [y.tolist() for _, y in remade] == [torch.tensor_split(y, 2)[1].tolist() for _, y in glob[:4]]
    # a single process, or a loader it cannot re-make, is left as it is (the loop slices global batches)
    assert qdist.shard_loader(plain, DistContext()) is plain
    pairs = [(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))]
    assert qdist.shard_loader(pairs, DistContext(0, 2)) is pairs and qdist.global_batch_sizes(pairs) is None
    assert qdist.shard_loader(DataLoader(np.arange(6), batch_size=None), DistContext(0, 2)).batch_sampler is None
