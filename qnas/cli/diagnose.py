"""``qnas diagnose clipping``: parse and call :func:`qnas.quant.clipping.clipping_report`.

    qnas diagnose clipping runs/x/model.pt [--split val] [--batches 10] [--json clip.json]
    qnas diagnose clipping runs/x --calib calib.npz --max-logits 1

Prints, per quantizer, the share of values it clips (activations over the data, weights over
the layer) and a summary; ``--max-logits PCT`` exits 1 when more than PCT % of the logits clip.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qnas.cli._args import add_command_group, positive_float, positive_int

__all__ = ["add_diagnose_parser", "cmd_diagnose_clipping"]


def _data(a: argparse.Namespace, loaded: Any) -> Any:
    """The images to run: ``--calib`` or the checkpoint's own data set split (``--split``)."""
    if a.calib:
        from qnas.calib_data.calibration import CalibrationSet

        return CalibrationSet.load(a.calib).images
    from qnas.data import load_dataset, split
    from qnas.errors import QnasError

    d = loaded.meta.get("data") or {}
    if not d:
        raise QnasError("the checkpoint records no data set; pass --calib CALIB.npz (`qnas calib build`)")
    parts = split(load_dataset(d["data"], d.get("data_path")), seed=d.get("split_seed", 0))
    return getattr(parts, a.split).at_resolution(loaded.arch.resolution).images


def cmd_diagnose_clipping(a: argparse.Namespace) -> int:
    from qnas.model_io import load_model
    from qnas.quant.clipping import clipping_report

    if a.json and not a.overwrite:
        from pathlib import Path

        from qnas.errors import CheckpointError

        if Path(a.json).exists():
            raise CheckpointError(f"{a.json} already exists; choose another --json or pass --force")
    loaded = load_model(a.model)
    report = clipping_report(loaded.model, _data(a, loaded), max_batches=a.batches, batch_size=a.batch_size)
    print(report.format())
    if a.json:
        from qnas.quant.checkpoint import atomic_write

        atomic_write(a.json, lambda tmp: tmp.write_text(json.dumps(report.to_dict(), indent=2)), overwrite=a.overwrite)
        print(f"report: {a.json}")
    logits = report.logits
    if a.max_logits is not None and logits is not None and 100 * logits.share > a.max_logits:
        print(f"qnas: {100 * logits.share:.2f} % of the logits clip, above --max-logits {a.max_logits:g} %",
              file=sys.stderr)
        return 1
    return 0


def add_diagnose_parser(sub: Any) -> argparse.ArgumentParser:
    d, dsub = add_command_group(sub, "diagnose", "inspect a finished model's quantizers",
                                "Diagnostics of a qnas checkpoint (model.pt or a run directory).", "diagnose_command")
    c = dsub.add_parser("clipping", help="share of values each quantizer clips",
                        description="Run the model (eval mode) over part of its data and report, per activation "
                                    "quantizer, the share of values outside its representable range (after the "
                                    "activation it applies), and per weight layer the share of clipped weights.")
    c.add_argument("model", metavar="MODEL_OR_RUN", help="model.pt or a run directory containing it")
    c.add_argument("--calib", metavar="NPZ", help="run these calibration images instead of the model's data set")
    c.add_argument("--split", default="val", choices=["train", "val", "test"],
                   help="split of the checkpoint's data set to run (default val)")
    c.add_argument("--batches", type=positive_int, default=10, help="at most this many batches (default 10)")
    c.add_argument("--batch-size", type=positive_int, default=128, help="images per batch (default 128)")
    c.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    c.add_argument("--force", dest="overwrite", action="store_true", help="overwrite --json if it exists")
    c.add_argument("--max-logits", type=positive_float, metavar="PCT",
                   help="exit 1 when more than PCT %% of the logits clip (e.g. 1)")
    c.set_defaults(func=cmd_diagnose_clipping)
    return d
