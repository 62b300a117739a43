"""``qnas export BACKEND``: parse and call :func:`qnas.exporting.export_model`."""
from __future__ import annotations

import argparse
import json
from typing import Any

from qnas.cli._args import add_command_group, fraction, refuse_existing
from qnas.exporters.targets import DEFAULT_TARGET_PROFILES

# backend -> (short help, description)
_BACKENDS: dict[str, tuple[str, str]] = {
    "onnx": ("ONNX QCDQ (Brevitas), verified in onnxruntime",
             "Export to ONNX QCDQ (any bit width: sub-8-bit as int8 Q -> Clip -> DQ) and check predictions against "
             "the PyTorch model in onnxruntime."),
    "tensorrt": ("ONNX in TensorRT's explicit-quantization form (int8 Q/DQ), verified in onnxruntime",
                 "Export to TensorRT's Q/DQ form (signed int8, zero point 0, per-channel weights on axis 0, "
                 "sub-8-bit activations as int8 behind a float clip), check conformance and predictions. "
                 "Build an engine from the file on a machine with tensorrt and a CUDA GPU (pip install \"qnas[tensorrt]\")."),
    "coreml": ("CoreML mlprogram (.mlpackage) with the learned int8/int4/2-bit-palettized weights",
               "Export to a CoreML mlprogram (iOS18 target) carrying the learned integer codes and scales. "
               "Needs pip install \"qnas[coreml]\". Prediction runs only on macOS; elsewhere the codes and scales "
               "stored in the file are compared with the model's."),
    "tflite": ("full-integer int8 TFLite via litert-torch, verified with LiteRT's interpreter",
               "Export to a full-integer int8 .tflite (what Edge TPU needs) carrying the learned codes and scales, "
               "and check predictions with ai-edge-litert's interpreter. Needs pip install \"qnas[tflite]\"."),
}


def cmd_export(a: argparse.Namespace) -> int:
    from qnas.exporting import export_model

    refuse_existing(a.report, a.overwrite, "--report")  # before the export, not after it
    options = {k: v for k, v in (("opset", getattr(a, "opset", None)), ("int8_io", getattr(a, "int8_io", None)))
               if v is not None}
    given = {k: v for k, v in (("min_agreement", a.min_agreement), ("min_within_step", a.min_within_step))
             if v is not None}  # else export_model's defaults
    result = export_model(a.model, a.backend, a.out, target_profile=a.target_profile, allow_upcast=a.allow_upcast,
                          verify=a.verify, overwrite=a.overwrite, options=options, **given)
    print("\n".join(result.lines()))
    if a.report:
        from qnas.quant.checkpoint import atomic_write

        atomic_write(a.report, lambda tmp: tmp.write_text(json.dumps(result.to_dict(), indent=2)), overwrite=a.overwrite)
        print(f"report: {a.report}")
    return 0


def add_export_parser(sub: Any) -> argparse.ArgumentParser:
    e, esub = add_command_group(sub, "export", "export a finished model for a target runtime",
                                "Export a qnas checkpoint (model.pt or a run directory).", "backend", "BACKEND")
    for backend, (help_text, desc) in _BACKENDS.items():
        eo = esub.add_parser(backend, help=help_text, description=desc)
        eo.add_argument("model", metavar="MODEL_OR_RUN", help="model.pt or a run directory containing it")
        eo.add_argument("--out", required=True, help="path to write (.onnx / .mlpackage / .tflite)")
        eo.add_argument("--force", dest="overwrite", action="store_true",
                        help="overwrite --out (and --report) if they exist")
        default_target = DEFAULT_TARGET_PROFILES[backend] or "none"
        eo.add_argument("--target-profile", default=default_target, metavar="PROFILE",
                        help=f"device profile whose precisions the file must run as searched (default: {default_target}; "
                             "'none' skips the check; `qnas latency show NAME`)")
        eo.add_argument("--allow-upcast", action="store_true",
                        help="export even where the target runs a layer at other bits than searched (or on the host); "
                             "the per-layer mapping is printed")
        eo.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="compare predictions with PyTorch on the test split, or the stored codes where no "
                             "runtime exists here (default: on)")
        eo.add_argument("--min-agreement", type=fraction,
                        help="fail below this share of identical predictions (default 0.995)")
        eo.add_argument("--min-within-step", type=fraction,
                        help="fail below this share of logits within one quantization step of PyTorch's, images "
                             "whose difference a rounding tie explains counted as faithful (default 0.999)")
        eo.add_argument("--report", metavar="JSON", help="also write the export report as JSON")
        if backend in ("onnx", "tensorrt"):
            eo.add_argument("--opset", type=int, help="ONNX opset (default 13)")
        if backend == "tflite":
            eo.add_argument("--int8-io", action="store_true",
                            help="int8 input and output tensors (Edge TPU) instead of float with quantize/dequantize")
        eo.set_defaults(func=cmd_export)
    return e
