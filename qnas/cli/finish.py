"""``qnas finish {qat,ptq}``: fill a :class:`~qnas.options.QATFinishOptions` /
:class:`~qnas.options.PTQFinishOptions` from the flags and call :mod:`qnas.finishing`
(imported when the command runs, so that building the parser stays fast)."""
from __future__ import annotations

import argparse
from typing import Any

from qnas.cli._args import (add_command_group, add_data_args, add_force_progress, add_torch_device_args, batch_size_int,
                            check_out_parent, fraction, non_negative_int, option_fields, positive_float, positive_int,
                            seed_int)
from qnas.options import INITS, PTQ_INITS, PTQ_METHODS, TEACHERS, PTQFinishOptions, QATFinishOptions

__all__ = ["add_finish_parser", "cmd_finish"]


def cmd_finish(a: argparse.Namespace) -> int:
    check_out_parent(a.out, "--out")  # before the training, not after it
    if a.finish_method == "qat":
        qat_options = QATFinishOptions(**option_fields(QATFinishOptions, a)).validate()
        from qnas.finishing import finish_qat

        res = finish_qat(a.run, qat_options)
    else:
        ptq_options = PTQFinishOptions(**option_fields(PTQFinishOptions, a)).validate()
        from qnas.finishing import finish_ptq

        res = finish_ptq(a.run, options=ptq_options)
    from qnas.quant.distributed import context

    if not context().is_main:  # under torchrun: one report
        return 0
    print("\n".join(res.lines()))
    print(f"export it with: qnas export onnx {res.path} --out model.onnx")
    return 0


def _add_common(p: argparse.ArgumentParser, float_epochs: int | None) -> None:
    p.add_argument("run", metavar="RUN_OR_ARCH",
                   help="run directory (arch.json, config.json, supernet/), arch JSON file or model.pt")
    p.add_argument("--calib", metavar="NPZ", help="calibration set (`qnas calib build`); default: 512 "
                                                  "class-balanced training images")
    p.add_argument("--out", help="model file to write (default: RUN/model.pt)")
    p.add_argument("--space", metavar="YAML", help="search-space config (default: the run's, else the embedded one)")
    add_data_args(p, None, "default: the run's, else digits")
    p.add_argument("--seed", type=seed_int, help="split and training seed (default: the run's, else 0)")
    p.add_argument("--batch-size", type=batch_size_int, help="training batch size (default: the run's, else 64)")
    p.add_argument("--float-epochs", type=non_negative_int, default=float_epochs,
                   help="float training epochs when the run has no weights")
    p.add_argument("--pretrained", metavar="PATH",
                   help="start from this float state_dict (torch.save(model.state_dict(), PATH)) instead of the "
                        "run's weights: a torchvision MobileNetV2 / MobileNetV3-Large for the reference arch of "
                        "--space mobilenetv2 / mobilenetv3-large (qnas.presets.reference_arch); implies --init "
                        "pretrained; another class count gets a new classifier")
    add_torch_device_args(p)
    add_force_progress(p, "overwrite --out if it exists")


def add_finish_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``finish {qat,ptq}`` to a ``qnas`` sub-command parser; ``args.func`` is :func:`cmd_finish`."""
    f, fsub = add_command_group(subparsers, "finish", "finish a searched arch with QAT or PTQ into a model.pt",
                                "Finish an arch (run directory, arch JSON or model.pt) into the quantized model that "
                                "`qnas export` reads.", "finish_method", "METHOD")
    qat = QATFinishOptions()
    q = fsub.add_parser("qat", help="quantization-aware training with distillation from a float teacher",
                        description="QAT from the run's weights (or PTQ of float weights, or scratch), knowledge "
                                    "distillation from a float teacher, cosine schedule, BN frozen late; "
                                    "resumable (rerun the same command after an interruption).")
    _add_common(q, qat.float_epochs)
    q.add_argument("--epochs", type=non_negative_int, default=qat.epochs, help="QAT epochs (default %(default)s)")
    q.add_argument("--lr", type=positive_float, default=qat.lr, help="peak learning rate (default %(default)s)")
    q.add_argument("--teacher", default=qat.teacher, choices=list(TEACHERS),
                   help="float teacher: the supernet's largest subnet, the same arch trained in float, none, or "
                        "auto (supernet if the run has one, else float)")
    q.add_argument("--init", default=qat.init, choices=list(INITS),
                   help="start from the run's weights (supernet), PTQ of the float weights, scratch, or PTQ "
                        "of the --pretrained file's weights (pretrained; auto picks it when --pretrained is given)")
    q.add_argument("--kd-weight", type=fraction, default=qat.kd_weight,
                   help="distillation weight alpha (default %(default)s)")
    q.add_argument("--kd-temperature", type=positive_float, default=qat.kd_temperature,
                   help="distillation temperature (default %(default)s)")
    q.add_argument("--early-stop", type=positive_int, metavar="N", default=qat.early_stop,
                   help="stop after N epochs without a better validation accuracy (default: off); the model always "
                        "keeps the weights of its best epoch on validation")
    q.set_defaults(func=cmd_finish)
    ptq = PTQFinishOptions()
    p = fsub.add_parser("ptq", help="post-training quantization (min-max, bias correction, GPTQ)",
                        description="Quantize the float weights of the run (or of float training) with Brevitas "
                                    "PTQ on a calibration set.")
    _add_common(p, ptq.float_epochs)
    p.add_argument("--method", default=ptq.method, choices=list(PTQ_METHODS),
                   help="minmax, + bias correction, + GPTQ (default %(default)s)")
    p.add_argument("--init", default=ptq.init, choices=list(PTQ_INITS),
                   help="float weights: the run's (else float training), or the --pretrained file's (auto picks "
                        "it when --pretrained is given)")
    p.set_defaults(func=cmd_finish)
    return f
