"""`qnas finish {qat,ptq}`: argument parsing only; the work is in :mod:`qnas.finishing`,
imported when the command runs so that building the CLI parser stays fast."""
from __future__ import annotations

import argparse
from typing import Any

from qnas.errors import ConfigError

TEACHERS = ("auto", "float", "supernet", "none")
INITS = ("auto", "supernet", "ptq", "scratch")
PTQ_METHODS = ("minmax", "bias_correction", "gptq")  # qnas.quant.ptq.PTQ_METHODS, spelled out to stay light


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_OR_ARCH",
                   help="run directory (arch.json, config.json, supernet/), arch JSON file or model.pt")
    p.add_argument("--calib", metavar="NPZ", help="calibration set (`qnas calib build`); default: 512 "
                                                  "class-balanced training images")
    p.add_argument("--out", help="model file to write (default: RUN/model.pt)")
    p.add_argument("--space", metavar="YAML", help="search-space config (default: the run's, else the embedded one)")
    p.add_argument("--data", choices=["digits", "imagefolder", "cifar10", "npz"],
                   help="data set kind (default: the run's, else digits)")
    p.add_argument("--data-path", help="path for imagefolder / cifar10 / npz data")
    p.add_argument("--seed", type=int, help="split and training seed (default: the run's, else 0)")
    p.add_argument("--batch-size", type=int, help="training batch size (default: the run's, else 64)")
    p.add_argument("--float-epochs", type=int, help="float training epochs when the run has no weights")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _positive_int(v: str) -> int:
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
    if i < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {v!r}")
    return i


def cmd_finish(a: argparse.Namespace) -> int:
    common = dict(out=a.out, space=a.space, data=a.data, data_path=a.data_path, seed=a.seed,
                  batch_size=a.batch_size, overwrite=a.force, progress=not a.no_progress)
    if a.batch_size is not None and a.batch_size < 2:
        raise ConfigError(f"--batch-size must be at least 2, got {a.batch_size}")
    from qnas.finishing import finish_ptq, finish_qat

    if a.finish_method == "qat":
        res = finish_qat(a.run, epochs=a.epochs, lr=a.lr, teacher=a.teacher, init=a.init, calib=a.calib,
                         kd_weight=a.kd_weight, kd_temperature=a.kd_temperature, float_epochs=a.float_epochs,
                         **common)
    else:
        res = finish_ptq(a.run, a.calib, a.method,
                         **({"float_epochs": a.float_epochs} if a.float_epochs is not None else {}), **common)
    print("\n".join(res.lines()))
    print(f"export it with: qnas export onnx {res.path} --out model.onnx")
    return 0


def add_finish_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``finish {qat,ptq}`` to a ``qnas`` sub-command parser; ``args.func`` is :func:`cmd_finish`."""
    f = subparsers.add_parser("finish", help="finish a searched arch with QAT or PTQ into a model.pt",
                              description="Finish an arch (run directory, arch JSON or model.pt) into the "
                                          "quantized model that `qnas export` reads.")
    fsub = f.add_subparsers(dest="finish_method", required=True, metavar="METHOD")
    q = fsub.add_parser("qat", help="quantization-aware training with distillation from a float teacher",
                        description="QAT from the run's weights (or PTQ of float weights, or scratch), knowledge "
                                    "distillation from a float teacher, cosine schedule, BN frozen late; "
                                    "resumable (rerun the same command after an interruption).")
    _add_common(q)
    q.add_argument("--epochs", type=_positive_int, default=10, help="QAT epochs (default 10)")
    q.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    q.add_argument("--teacher", default="auto", choices=list(TEACHERS),
                   help="float teacher: the supernet's largest subnet, the same arch trained in float, none, or "
                        "auto (supernet if the run has one, else float)")
    q.add_argument("--init", default="auto", choices=list(INITS),
                   help="start from the run's weights (supernet), PTQ of the float weights, or scratch")
    q.add_argument("--kd-weight", type=float, default=0.5, help="distillation weight alpha (default 0.5)")
    q.add_argument("--kd-temperature", type=float, default=2.0, help="distillation temperature (default 2)")
    q.set_defaults(func=cmd_finish)
    p = fsub.add_parser("ptq", help="post-training quantization (min-max, bias correction, GPTQ)",
                        description="Quantize the float weights of the run (or of float training) with Brevitas "
                                    "PTQ on a calibration set.")
    _add_common(p)
    p.add_argument("--method", default="gptq", choices=list(PTQ_METHODS),
                   help="minmax, + bias correction, + GPTQ (default gptq)")
    p.set_defaults(func=cmd_finish)
    return f
