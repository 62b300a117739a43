"""``qnas supernet train``: parse and call :func:`qnas.searching.train_supernet_run` (with ``--pretrained``:
:func:`qnas.pretrained.train_pretrained_supernet_run`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from qnas.cli._args import (add_command_group, add_data_args, add_force_progress, add_torch_device_args, batch_size_int,
                            check_out_parent, load_space, positive_float, positive_phase_epochs, seed_int)


def cmd_supernet_train(a: argparse.Namespace) -> int:
    check_out_parent(a.out, "--out")  # before the training, not after it
    kwargs = dict(data=a.data, data_path=a.data_path, space=load_space(a.space), epochs=a.epochs, lr=a.lr,
                  batch_size=a.batch_size, seed=a.seed, resume=a.resume, overwrite=a.overwrite, progress=a.progress,
                  torch_device=a.torch_device, amp=a.amp, stream=a.stream)
    if a.pretrained is not None:
        from qnas.pretrained import train_pretrained_supernet_run

        history = train_pretrained_supernet_run(a.out, a.pretrained, **kwargs)
    else:
        from qnas.searching import train_supernet_run

        history = train_supernet_run(a.out, **kwargs)
    from qnas.quant.distributed import context

    if not context().is_main:
        return 0
    for h in history:
        print(f"epoch {h['epoch']:3d} [{h['phase']}] loss {h['loss']:.3f}  largest {h.get('val_acc_largest', float('nan')):.3f}"
              f"  smallest {h.get('val_acc_smallest', float('nan')):.3f}  ({h['seconds']:.0f} s)")
    print(f"wrote {Path(a.out) / 'supernet.pt'}; search it with: qnas search --accuracy supernet --accuracy-path {Path(a.out)}")
    return 0


def add_supernet_parser(sub: Any) -> argparse.ArgumentParser:
    sn, snsub = add_command_group(sub, "supernet", "train the weight-sharing supernet",
                                  "Train the supernet (sandwich rule, progressive shrinking, in-place distillation).",
                                  "supernet_command")
    snt = snsub.add_parser("train", help="train (or --resume) a supernet into --out",
                           description="Train a supernet over the search space; checkpoints every epoch. "
                                       "Data parallel when launched by torchrun (--batch-size is the global batch).")
    add_data_args(snt, "digits", "default: the bundled digits")
    snt.add_argument("--space", metavar="YAML")
    snt.add_argument("--out", required=True, help="directory for supernet.pt")
    snt.add_argument("--epochs", type=positive_phase_epochs, default=2, metavar="N|K,D,W,B",
                     help="epochs per phase, or per phase: kernel,depth,width,bits (e.g. 3,3,6,12)")
    snt.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate (default 3e-3)")
    snt.add_argument("--batch-size", type=batch_size_int, default=64)
    snt.add_argument("--seed", type=seed_int, default=0)
    snt.add_argument("--resume", action="store_true", help="continue from --out/supernet.pt")
    snt.add_argument("--pretrained", metavar="PATH",
                     help="start from a torchvision MobileNetV2 / MobileNetV3-Large state_dict: it becomes the "
                          "subnet that is the published network (needs --space mobilenetv2 / mobilenetv3-large "
                          "or a space containing it; another class count gets a new classifier)")
    add_torch_device_args(snt)
    add_force_progress(snt, "start over even if --out/supernet.pt exists")
    snt.set_defaults(func=cmd_supernet_train)
    return sn
