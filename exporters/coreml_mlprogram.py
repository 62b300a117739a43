"""CoreML export: an ML program (``.mlpackage``) whose weights are the model's learned integer codes.

The MIL program is written op by op from the :class:`~qnas.quant.build.QuantNet`
(no tracing, no re-quantization, no calibration of its own), with
``minimum_deployment_target=iOS18`` and fp32 compute precision:

* weights ``w_bits`` 8 (and 5-7): ``constexpr_blockwise_shift_scale(data=int8 codes,
  scale=fp32 per-output-channel scale)``; ``w_bits`` 4 (and 3): the same with int4
  codes (int4 needs iOS18); ``w_bits`` 2: ``constexpr_lut_to_dense`` palettization
  with uint2 indices ``code + 2`` and a per-output-channel fp32 lookup table
  ``[-2s, -s, 0, s]``, so every dense weight is exactly ``code * s`` and both the
  code and the scale ``s`` (the table's last entry) are read back from the file;
* activation quantizers: ``quantize -> dequantize`` in int8 with the learned
  per-tensor scale and zero point 0, preceded by a float ``clip`` to
  ``[qmin*s, qmax*s]`` when the quantizer's integer range is narrower than int8
  (4-bit activations) — the same values as Brevitas' ``clamp(round(x/s))*s``;
* the 8-bit stream quantizers that feed no conv (a residual block's
  ``out_quant``, ``pool_quant`` before the pooling, ``logit_quant`` after the
  head) are the same int8 ``quantize -> dequantize`` pairs; a residual block's
  ``add`` sums its quantized input (the ``in_quant`` output) and its quantized
  output, and the program's output ``logits`` is ``logit_quant``'s dequantize;
* BatchNorm stays a ``batch_norm`` op (folding it into the weights would change
  the codes), then ``relu``, ``reduce_mean`` pooling and a ``linear`` head with
  its float bias.

Standard mobile-space kinds: ``relu6``; h-swish and hard-sigmoid as torch computes them
(``add 3 -> clip [0, 6] -> [mul x ->] real_div 6``); squeeze-excite as ``reduce_mean`` (keep
dims) -> its quantizer -> conv with bias -> relu -> conv with bias -> hard-sigmoid -> gate
quantizer -> ``mul`` with the feature map -> ``se.out_quant``; the feature-mix conv and the
pre-classifier ``linear`` like any conv / the head.

Prediction needs the CoreML runtime, which exists only on macOS. Elsewhere
:meth:`CoreMLExporter.check_codes` re-opens the saved package, reads every
constexpr weight op and compares its integer codes and scales (and every
activation scale) with the model's, and :func:`simulate` runs the stored
program in a small fp32 reference interpreter (not CoreML's kernels).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from qnas.exporters.base import (Capabilities, CodeCheck, Exporter, ParityReport, import_sdk,
                                 quiet_native_output, register)
from qnas.exporters.activations import check_activation
from qnas.quant.errors import ExportError
from qnas.quant.layer_view import ActQuantizer, QuantLayer, read_act_quant, read_weight_quant

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
SCALE_RTOL = 1e-6
NOT_VERIFIED_OFF_MACOS = ("CoreML prediction was NOT run (the CoreML runtime exists only on macOS); "
                          "the stored integer codes and scales were compared with the model instead "
                          "(simulate() runs the stored program in a reference interpreter, not CoreML)")


@dataclass
class CoreMLLayer:
    """How one quantized layer (weights + the activation quantizer feeding it) is stored."""

    layer: str
    """module path (and plan name), e.g. ``s0.b0.dw``"""
    w_bits: int
    a_bits: int
    weight_op: str
    """the constexpr op holding the weights in the MIL program"""
    weight_storage: str
    act_storage: str

    def __str__(self) -> str:
        return f"{self.layer}: w{self.w_bits} -> {self.weight_storage}; a{self.a_bits} -> {self.act_storage}"


@dataclass
class CoreMLActivation:
    """How one activation quantizer that feeds no weight layer (residual output, pooled
    features, logits) is stored."""

    quantizer: str
    """module path, e.g. ``s1.b1.out_quant``"""
    a_bits: int
    role: str
    act_storage: str

    def __str__(self) -> str:
        return f"{self.quantizer} ({self.role}): a{self.a_bits} -> {self.act_storage}"


@dataclass
class CoreMLReport:
    """Per-layer storage of one CoreML export."""

    path: str
    target: str = "iOS18"
    layers: list[CoreMLLayer] = field(default_factory=list)
    activations: list[CoreMLActivation] = field(default_factory=list)
    """the stream quantizers (``out_quant`` of residual blocks, ``pool_quant``, ``logit_quant``)"""
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [str(m) for m in self.layers] + [str(a) for a in self.activations] + self.notes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coremltools() -> Any:
    """``import coremltools`` (lazily), without its import-time log lines about the missing
    macOS runtime and untested torch / scikit-learn versions."""
    if sys.modules.get("coremltools") is not None:
        return sys.modules["coremltools"]
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with quiet_native_output():  # import-time warnings of torch/coremltools version checks
            return import_sdk("coremltools", "coreml")
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Hide coremltools' per-pipeline tqdm bars while converting."""
    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        with quiet_native_output():  # TQDM_DISABLE only reaches bars created after tqdm reads it
            yield
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old


# ----------------------------------------------------------------------------- model side


@dataclass
class _WeightQ:
    codes: np.ndarray
    """int codes, the layer's weight shape"""
    scale: np.ndarray
    """fp32 per-output-channel scale, shape ``[cout, 1, ...]`` (rank of codes)"""
    bits: int


@dataclass
class _ActQ:
    scale: np.float32
    qmin: int
    qmax: int
    bits: int
    signed: bool


def _weight_q(layer: nn.Module, name: str) -> _WeightQ:
    """The learned integer codes and per-channel scales of a Brevitas conv/linear."""
    if not hasattr(layer, "quant_weight"):
        raise ExportError(f"{name} is not a Brevitas quantized layer; the coreml exporter only writes QuantNet models")
    w = read_weight_quant(layer)
    codes = w.codes.cpu().numpy().astype(np.int64)
    if float(w.zero_point.abs().max()) != 0.0:
        raise ExportError(f"{name}: weight zero point is not 0; CoreML export needs symmetric weights")
    cout = codes.shape[0]
    scale = w.scale.cpu()
    if scale.numel() == 1:
        scale = scale.expand(cout)
    if scale.numel() != cout:
        raise ExportError(f"{name}: weight scale has {scale.numel()} entries, expected one per output channel ({cout})")
    scale_np = scale.numpy().astype(np.float32).reshape((cout,) + (1,) * (codes.ndim - 1))
    if not w.signed:
        raise ExportError(f"{name}: unsigned weight codes are not supported by the coreml exporter")
    return _WeightQ(codes=codes, scale=scale_np, bits=w.bits)


def _act_q(module: nn.Module, name: str) -> _ActQ:
    """Scale and integer range of a Brevitas activation quantizer (QuantIdentity / QuantReLU)."""
    q = read_act_quant(module)
    if q is None:
        raise ExportError(f"{name} has no enabled activation quantizer; the coreml exporter only writes QuantNet models")
    if not q.per_tensor:
        raise ExportError(f"{name}: activation scale must be per-tensor")
    if float(q.zero_point.abs().max()) != 0.0:
        raise ExportError(f"{name}: activation zero point is not 0; CoreML export needs symmetric activations")
    lo, hi = (-128, 127) if q.signed else (0, 255)
    if q.qmin < lo or q.qmax > hi:
        raise ExportError(f"{name}: {q.bits}-bit activations do not fit CoreML's 8-bit quantize op")
    return _ActQ(scale=np.float32(q.scale_value), qmin=q.qmin, qmax=q.qmax, bits=q.bits, signed=q.signed)


def _weight_storage(bits: int, codes: np.ndarray) -> str:
    lo, hi = int(codes.min()), int(codes.max())
    if bits <= 2 and lo >= -2 and hi <= 1:
        return "lut2"
    if bits <= 4 and lo >= -8 and hi <= 7:
        return "int4"
    if bits <= 8 and lo >= -128 and hi <= 127:
        return "int8"
    raise ExportError(f"{bits}-bit weight codes in [{lo}, {hi}] do not fit CoreML's int8/int4/2-bit LUT storage")


_STORAGE_TEXT = {
    "int8": "int8 codes + fp32 per-channel scale (constexpr_blockwise_shift_scale)",
    "int4": "int4 codes + fp32 per-channel scale (constexpr_blockwise_shift_scale, iOS18)",
    "lut2": "2-bit LUT palettized: uint2 indices + per-channel fp32 LUT code*scale (constexpr_lut_to_dense)",
}

_STREAM_ROLES = {
    "residual": "residual block output, added to the quantized block input",
    "pool": "features before global average pooling",
    "logits": f"logits (output '{OUTPUT_NAME}')",
    "se": "squeeze-excite input: pooled, and multiplied by the gate",
    "gate": "squeeze-excite gate (after the hard-sigmoid), multiplied with the feature map",
}
#: the activations after a conv/linear this backend writes
ACTIVATIONS = ("relu", "relu6", "hswish", "hsigmoid")


def _ident(path: str) -> str:
    """A module path as a MIL identifier (``s0.b1.dw`` -> ``s0_b1_dw``)."""
    return path.replace(".", "_")


def _op_name(layer: str) -> str:
    return _ident(layer) + "_weight"


def _quant_layers(model: nn.Module) -> list[QuantLayer]:
    """The model's quantized layers (:meth:`qnas.quant.build.QuantNet.quant_layers`)."""
    if not callable(getattr(model, "quant_layers", None)):
        raise ExportError(f"the coreml exporter writes qnas QuantNet models; "
                          f"{type(model).__name__} has no quant_layers()")
    return model.quant_layers()


def _act_quantizers(model: nn.Module) -> list[ActQuantizer]:
    """Every activation quantizer of the model: those feeding a weight layer, then the 8-bit
    stream ones (each residual block's ``out_quant``, ``pool_quant``, ``logit_quant``)."""
    return [layer.input_quant for layer in _quant_layers(model)] + model.stream_quants()


def _act_op_name(a_path: str, kind: str) -> str:
    """The name of an activation quantizer's ``quantize`` / ``dequantize`` (or ``clip``) op;
    ``logit_quant``'s dequantize is the program's output and is named ``logits``."""
    if a_path == "logit_quant" and kind == "dequantize":
        return OUTPUT_NAME
    return f"{_ident(a_path)}_{kind}"


def _act_storage(q: _ActQ) -> str:
    full, dt = ((-128, 127), "int8") if q.signed else ((0, 255), "uint8")
    return (f"{dt} quantize/dequantize, scale {float(q.scale):.6g}"
            + (f", clipped to [{q.qmin}, {q.qmax}]" if (q.qmin, q.qmax) != full else ""))


def model_codes(model: nn.Module) -> dict[str, _WeightQ]:
    """The learned integer codes and scales of every quantized weight layer, by module path."""
    return {layer.name: _weight_q(layer.module, layer.name) for layer in _quant_layers(model)}


# ----------------------------------------------------------------------------- program


def _build_program(model: nn.Module, shape: tuple[int, ...]) -> tuple[Any, list[CoreMLLayer], list[CoreMLActivation]]:
    """The MIL program of ``model``: each quantized layer's ``input quantizer -> conv/linear
    -> batch_norm -> relu -> [residual add] -> output quantizer``, in execution order."""
    ct = _coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    layers = _quant_layers(model)
    _check_supported(model, layers)
    report: list[CoreMLLayer] = []
    acts: dict[str, _ActQ] = {q.name: _act_q(q.module, q.name) for q in _act_quantizers(model)}
    act_report = [CoreMLActivation(quantizer=q.name, a_bits=acts[q.name].bits, role=_STREAM_ROLES[q.kind],
                                   act_storage=_act_storage(acts[q.name])) for q in model.stream_quants()]

    def act(x: Any, path: str) -> Any:
        q = acts[path]
        lo, hi = (-128, 127) if q.signed else (0, 255)
        if (q.qmin, q.qmax) != (lo, hi):
            x = mb.clip(x=x, alpha=np.float32(q.qmin * q.scale), beta=np.float32(q.qmax * q.scale),
                        name=_act_op_name(path, "clip"))
        dt, zp = ("int8", np.int8(0)) if q.signed else ("uint8", np.uint8(0))
        x = mb.quantize(input=x, scale=q.scale, zero_point=zp, output_dtype=dt, name=_act_op_name(path, "quantize"))
        return mb.dequantize(input=x, scale=q.scale, zero_point=zp, name=_act_op_name(path, "dequantize"))

    def weight(layer: QuantLayer) -> Any:
        path, spec = layer.name, layer.spec
        wq = _weight_q(layer.module, path)
        kind = _weight_storage(wq.bits, wq.codes)
        report.append(CoreMLLayer(
            layer=path, w_bits=int(spec.w_bits), a_bits=int(spec.a_bits), weight_op=_op_name(path),
            weight_storage=_STORAGE_TEXT[kind], act_storage=_act_storage(acts[layer.input_quant.name])))
        if kind == "lut2":
            cout = wq.codes.shape[0]
            lut = (np.arange(-2, 2, dtype=np.float32).reshape(1, 4) * wq.scale.reshape(cout, 1)).astype(np.float32)
            lut = lut.reshape((cout,) + (1,) * (wq.codes.ndim - 1) + (4, 1))
            indices = (wq.codes + 2).astype(types.np_uint2_dtype)
            return mb.constexpr_lut_to_dense(indices=indices, lut=lut, name=_op_name(path))
        data = wq.codes.astype(types.np_int4_dtype if kind == "int4" else np.int8)
        return mb.constexpr_blockwise_shift_scale(data=data, scale=wq.scale, name=_op_name(path))

    def conv(x: Any, layer: QuantLayer) -> Any:
        w = weight(layer)
        m = layer.module
        s, p = m.stride, m.padding
        if isinstance(p, str):
            raise ExportError(f"{layer.name}: string padding {p!r} is not supported by the coreml exporter")
        kw = {} if layer.bias is None else {"bias": conv_bias(layer)}  # the squeeze-excite convs have a bias
        return mb.conv(x=x, weight=w, strides=list(s), pad_type="custom", pad=[p[0], p[0], p[1], p[1]],
                       dilations=list(m.dilation), groups=int(m.groups), name=_ident(layer.name), **kw)

    def linear(x: Any, layer: QuantLayer) -> Any:
        w = weight(layer)
        bias = layer.bias
        b = (bias.detach().cpu().float().numpy().astype(np.float32) if bias is not None
             else np.zeros(layer.module.out_features, np.float32))
        return mb.linear(x=x, weight=w, bias=b, name=_ident(layer.name))

    def bn(x: Any, path: str, m: nn.Module) -> Any:
        if not isinstance(m, nn.BatchNorm2d) or m.running_mean is None:
            raise ExportError(f"{path} must be a BatchNorm2d with running statistics")
        f32 = lambda t: t.detach().cpu().float().numpy().astype(np.float32)  # noqa: E731
        gamma = f32(m.weight) if m.weight is not None else np.ones(m.num_features, np.float32)
        beta = f32(m.bias) if m.bias is not None else np.zeros(m.num_features, np.float32)
        return mb.batch_norm(x=x, mean=f32(m.running_mean), variance=f32(m.running_var), gamma=gamma, beta=beta,
                             epsilon=np.float32(m.eps), name=_ident(path))

    def relu(x: Any, layer: QuantLayer) -> Any:
        # a QuantReLU's ReLU is named after the quantizer, a plain ReLU module after itself
        fused = layer.relu == layer.output_quant.name
        if layer.act == "relu":
            return mb.relu(x=x, name=_ident(layer.relu) + ("_relu" if fused else ""))
        name = _ident(layer.relu) + (f"_{layer.act}" if fused else "")
        if layer.act == "relu6":
            return mb.relu6(x=x, name=name)
        # torch's own arithmetic (fp32): hardsigmoid = min(max(x + 3, 0), 6) / 6, hardswish = x * that
        r = mb.clip(x=mb.add(x=x, y=np.float32(3), name=f"{name}_add3"), alpha=np.float32(0), beta=np.float32(6),
                    name=f"{name}_clip")
        if layer.act == "hswish":
            r = mb.mul(x=x, y=r, name=f"{name}_mul")
        return mb.real_div(x=r, y=np.float32(6), name=name)

    def conv_bias(layer: QuantLayer) -> Any:
        bias = layer.bias
        return None if bias is None else bias.detach().cpu().float().numpy().astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=shape, dtype=types.fp32)], opset_version=ct.target.iOS18)
    def prog(input):  # noqa: A002 - the input's name in the model
        x = act(input, layers[0].input_quant.name)
        quantized = {layers[0].input_quant.name: x}  # quantizer path -> its output, for the residual adds
        pooled = False
        se_input = None
        for layer in layers:
            if layer.spec.op == "fc" and not pooled:  # global average pooling of pool_quant's output feeds the classifier
                x = mb.reduce_mean(x=x, axes=[2, 3], keep_dims=False, name="pool")
                x = act(x, layer.input_quant.name)
                pooled = True
            elif _se_part(layer) == "reduce":  # squeeze-excite: pool the feature map (act2's output)
                se_input = x
                x = mb.reduce_mean(x=x, axes=[2, 3], keep_dims=True, name=_ident(f"{layer.block}.se.pool"))
                x = act(x, layer.input_quant.name)
            x = linear(x, layer) if layer.spec.op == "fc" else conv(x, layer)
            if layer.bn is not None:
                x = bn(x, layer.bn_name, layer.bn)
            if layer.relu is not None:
                x = relu(x, layer)
            if layer.residual is not None:  # quantized input + 8-bit quantized output, as in MBConv.forward
                r = layer.residual
                x = mb.add(x=quantized[r.skip.name], y=act(x, r.quant.name), name=_ident(r.name))
            x = act(x, layer.output_quant.name)  # logit_quant's dequantize is named OUTPUT_NAME
            quantized[layer.output_quant.name] = x
            if _se_part(layer) == "expand":  # the gate times the feature map, quantized for the project conv
                x = mb.mul(x=se_input, y=x, name=_ident(f"{layer.block}.se.mul"))
                x = act(x, f"{layer.block}.se.out_quant")
                quantized[f"{layer.block}.se.out_quant"] = x
        return x

    return prog, report, act_report


def _check_supported(model: nn.Module, layers: list[QuantLayer]) -> None:
    head = layers[-1]
    fcs = [i for i, layer in enumerate(layers) if layer.spec.op == "fc"]
    if head.spec.op != "fc" or fcs not in ([len(layers) - 1], [len(layers) - 2, len(layers) - 1]):
        raise ExportError("the coreml exporter expects a fully connected head as the last layer "
                          "(after at most one pre-classifier linear)")
    bq = getattr(head.module, "bias_quant", None)
    if bq is not None and getattr(bq, "is_quant_enabled", False):
        raise ExportError("the head's bias is quantized; the coreml exporter writes a float bias only")
    if not isinstance(getattr(model, "pool", None), nn.AdaptiveAvgPool2d) or model.pool.output_size not in (1, (1, 1)):
        raise ExportError("the coreml exporter expects global average pooling before the head")
    for i, layer in enumerate(layers):
        check_activation(model, layer, "coreml", ACTIVATIONS)
        part = _se_part(layer)
        if part is not None:
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            want = "expand" if part == "reduce" else "project"
            if nxt is None or nxt.block != layer.block or not nxt.name.endswith(f".{want}") or (
                    part == "expand" and nxt.input_quant.name != f"{layer.block}.se.out_quant"):
                raise ExportError(f"{layer.name}: the coreml exporter expects squeeze-excite as reduce, expand, "
                                  "then the block's project conv")


def _se_part(layer: QuantLayer) -> str | None:
    """``reduce``/``expand`` for a squeeze-excite conv (``s1.b0.se.reduce``), else None."""
    parts = layer.name.rsplit(".", 2)
    return parts[2] if len(parts) == 3 and parts[1] == "se" and parts[2] in ("reduce", "expand") else None


def _save_package(mlmodel: Any, out: Path, overwrite: bool) -> Path:
    """Save an ``.mlpackage`` (a directory) into a temp dir next to ``out``, then rename it onto ``out``."""
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists; choose another path or pass overwrite=True (--force)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staged = tmpdir / "model.mlpackage"
        mlmodel.save(str(staged))
        if out.exists() or out.is_symlink():
            trash = tmpdir / "previous"
            os.replace(out, trash)  # a directory cannot be replaced in one rename; move the old one aside
        os.replace(staged, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- file side


def _load_program(path: Path) -> Any:
    """The MIL program stored in a saved ``.mlpackage`` (works without the CoreML runtime)."""
    ct = _coremltools()
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    if not path.exists():
        raise ExportError(f"CoreML package not found: {path}")
    try:
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
        spec = mlmodel.get_spec()
        return milproto_load(model_spec=spec, specification_version=spec.specificationVersion,
                             file_weights_dir=mlmodel.weights_dir)
    except ExportError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(f"cannot read the CoreML package {path} ({first[:160]}); re-export the model") from None


def stored_codes(path: str | Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, str]], dict[str, float]]:
    """Read back ``{op name: (codes, per-channel scale, storage)}`` for every constexpr weight
    op and ``{quantize op name: scale}`` for every activation quantize op of a saved package."""
    prog = _load_program(Path(path))
    weights: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    act_scales: dict[str, float] = {}
    for fn in prog.functions.values():
        for op in fn.operations:
            if op.op_type == "constexpr_blockwise_shift_scale":
                data, scale = np.asarray(op.data.val), np.asarray(op.scale.val, dtype=np.float32)
                offset = getattr(op, "offset", None)
                if offset is not None and np.any(np.asarray(offset.val) != 0):
                    weights[op.name] = (data.astype(np.int64), scale, "offset!=0")
                    continue
                storage = {"int4": "int4", "int8": "int8"}.get(_dtype_name(op.data), _dtype_name(op.data))
                weights[op.name] = (data.astype(np.int64), scale, storage)
            elif op.op_type == "constexpr_lut_to_dense":
                idx = np.asarray(op.indices.val).astype(np.int64)
                lut = np.asarray(op.lut.val, dtype=np.float32)
                cout = lut.shape[0]
                table = lut.reshape(cout, -1)  # [cout, 4] with one LUT per output channel
                scale = table[:, 3].copy()
                expected = np.arange(-2, 2, dtype=np.float32).reshape(1, 4) * scale.reshape(cout, 1)
                storage = "lut2" if (table.shape[1] == 4 and np.array_equal(table, expected.astype(np.float32))
                                     and lut.shape[1:idx.ndim] == (1,) * (idx.ndim - 1)) else "lut2-not-code*scale"
                weights[op.name] = (idx - 2, scale.reshape((cout,) + (1,) * (idx.ndim - 1)), storage)
            elif op.op_type in ("quantize", "dequantize"):
                act_scales[op.name] = float(np.asarray(op.scale.val, dtype=np.float32))
    return weights, act_scales


def _dtype_name(var: Any) -> str:
    from coremltools.converters.mil.mil import types

    return types.builtin_to_string(var.dtype)


def simulate(path: str | Path, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Evaluate the ML program stored in a saved package with a small fp32 reference
    interpreter (torch ops, ``quantize`` rounding half to even like ``torch.round``).

    This is a Linux-side check that the file's program (its wiring, constants and
    decompressed weights) computes the model's function; it is NOT the CoreML
    runtime, whose kernels run only on macOS."""
    import torch.nn.functional as F

    prog = _load_program(Path(path))
    fn = prog.functions["main"]
    const: dict[str, torch.Tensor] = {}
    for op in fn.operations:  # constexpr weights are decompressed once, as CoreML does at load time
        if op.op_type == "constexpr_blockwise_shift_scale":
            w = op.decompress(np.asarray(op.data.val), np.asarray(op.scale.val, dtype=np.float32),
                              None if op.offset is None else np.asarray(op.offset.val))
        elif op.op_type == "constexpr_lut_to_dense":
            w = op.decompress(np.asarray(op.indices.val), np.asarray(op.lut.val, dtype=np.float32),
                              None if op.vector_axis is None else op.vector_axis.val)
        else:
            continue
        const[op.outputs[0].name] = torch.from_numpy(np.asarray(w, dtype=np.float32))

    steps: list[tuple[str, str, dict[str, Any], dict[str, str]]] = []
    for op in fn.operations:  # resolve the constant inputs once
        if op.op_type == "const" or op.op_type.startswith("constexpr_"):
            continue
        fixed: dict[str, Any] = {}
        dynamic: dict[str, str] = {}
        for k, v in op.inputs.items():
            if v.name in const:
                fixed[k] = const[v.name]
            elif v.op is not None and v.op.op_type == "const":
                fixed[k] = v.val
            else:
                dynamic[k] = v.name
        steps.append((op.op_type, op.outputs[0].name, fixed, dynamic))

    def run(x: torch.Tensor) -> torch.Tensor:
        env: dict[str, Any] = {fn.inputs[n].name: x for n in fn.inputs}
        for t, out, fixed, dynamic in steps:
            a = {**fixed, **{k: env[n] for k, n in dynamic.items()}}
            f32 = lambda v: torch.as_tensor(np.asarray(v, dtype=np.float32))  # noqa: E731
            if t == "quantize":
                zp = float(a.get("zero_point", 0) or 0)
                lo, hi = (-128, 127) if str(a["output_dtype"]) == "int8" else (0, 255)
                y = torch.clamp(torch.round(a["input"] / f32(a["scale"])) + zp, lo, hi)
                y = (y, zp)
            elif t == "dequantize":
                q, zp = a["input"]
                y = (q - zp) * f32(a["scale"])
            elif t == "clip":
                y = torch.clamp(a["x"], float(a["alpha"]), float(a["beta"]))
            elif t == "relu":
                y = torch.relu(a["x"])
            elif t == "relu6":
                y = torch.clamp(a["x"], 0.0, 6.0)
            elif t in ("add", "mul", "real_div"):
                xv, yv = (v if isinstance(v, torch.Tensor) else f32(v) for v in (a["x"], a["y"]))
                y = xv + yv if t == "add" else xv * yv if t == "mul" else xv / yv
            elif t == "batch_norm":
                y = F.batch_norm(a["x"], f32(a["mean"]), f32(a["variance"]), f32(a["gamma"]), f32(a["beta"]),
                                 False, 0.0, float(a["epsilon"]))
            elif t == "conv":
                pad = [int(p) for p in a["pad"]]
                xx = F.pad(a["x"], [pad[2], pad[3], pad[0], pad[1]])
                bias = a.get("bias")
                y = F.conv2d(xx, a["weight"], None if bias is None else f32(bias), [int(s) for s in a["strides"]], 0,
                             [int(d) for d in a["dilations"]], int(a["groups"]))
            elif t == "reduce_mean":
                y = a["x"].mean(dim=[int(d) for d in a["axes"]], keepdim=bool(a["keep_dims"]))
            elif t == "linear":
                y = F.linear(a["x"], a["weight"], f32(a["bias"]))
            else:
                raise ExportError(f"simulate: op {t} is not supported by the reference interpreter")
            env[out] = y
        return env[fn.outputs[0].name]

    x = images.detach().cpu().float()
    with torch.no_grad():  # the ops are batch-agnostic, so whole batches run at once
        return torch.cat([run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


# ----------------------------------------------------------------------------- exporter


@register("coreml")
class CoreMLExporter(Exporter):
    """CoreML ML program (``.mlpackage``, iOS18 target) with int8 / int4 / 2-bit-palettized weights
    holding the model's learned codes and scales. ``export`` returns the path;
    :meth:`export_with_report` also returns the per-layer storage (:class:`CoreMLReport`)."""

    suffix = ".mlpackage"
    extra = "coreml"
    capabilities = Capabilities(check_codes=True, layer_report=True)

    def runtime_available(self) -> bool:
        if sys.platform != "darwin":
            return False
        try:
            _coremltools()
            from coremltools.models import model as _model
        except Exception:
            return False
        return getattr(_model, "_MLModelProxy", None) is not None

    def export_with_report(self, model: nn.Module, example_input: torch.Tensor, out: str | Path,
                           overwrite: bool = False) -> tuple[Path, CoreMLReport]:
        out = Path(out)
        if out.suffix != ".mlpackage":
            raise ExportError(f"a CoreML ML program is a .mlpackage directory; name the output *.mlpackage, not {out.name}")
        if out.exists() and not overwrite:
            raise ExportError(f"{out} already exists; choose another path or pass overwrite=True (--force)")
        ct = _coremltools()
        was_training = model.training
        model.eval()
        try:
            shape = (1,) + tuple(int(s) for s in example_input.shape[1:])
            prog, layers, activations = _build_program(model, shape)
            with _quiet_progress():
                mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                                     compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY,
                                     skip_model_load=True)
            mlmodel.short_description = "qnas QuantNet: learned integer weight codes and scales (no re-quantization)"
            _save_package(mlmodel, out, overwrite)
        except ExportError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(f"CoreML export failed ({type(e).__name__}: {first[:160]})") from None
        finally:
            model.train(was_training)
        report = CoreMLReport(path=str(out), layers=layers, activations=activations, notes=[
            f"input '{INPUT_NAME}' shape {list(shape)} fp32, output '{OUTPUT_NAME}'; compute precision fp32; "
            "BatchNorm kept as batch_norm ops (not folded, so the codes stay the model's)",
        ])
        return out, report

    def check_codes(self, path: str | Path, model: nn.Module) -> CodeCheck:
        """Compare every stored weight's integer codes (exactly) and per-channel scales
        (relative error < 1e-6) and every activation scale with the model's, the 8-bit stream
        quantizers (residual ``out_quant``, ``pool_quant``, ``logit_quant``) included."""
        path = Path(path)
        weights, act_scales = stored_codes(path)
        check = CodeCheck(backend=self.name, tensors=0)
        worst = 0.0
        for layer in _quant_layers(model):
            name = layer.name
            ref = _weight_q(layer.module, name)
            op = _op_name(name)
            check.tensors += 1
            if op not in weights:
                check.mismatches.append(f"{name}: no weight op '{op}' in {path.name}")
                continue
            codes, scale, storage = weights[op]
            want = _weight_storage(ref.bits, ref.codes)
            if storage != want:
                check.mismatches.append(f"{name}: stored as {storage}, expected {want} for {ref.bits}-bit codes")
            if codes.shape != ref.codes.shape:
                check.mismatches.append(f"{name}: codes shape {list(codes.shape)} != model {list(ref.codes.shape)}")
                continue
            diff = int(np.count_nonzero(codes != ref.codes))
            if diff:
                check.mismatches.append(f"{name}: {diff} of {codes.size} integer codes differ from the model's")
            if scale.size != ref.scale.size:
                check.mismatches.append(f"{name}: {scale.size} scales stored, model has {ref.scale.size}")
                continue
            s, r = scale.reshape(-1).astype(np.float64), ref.scale.reshape(-1).astype(np.float64)
            rel = float(np.max(np.abs(s - r) / np.maximum(np.abs(r), np.finfo(np.float32).tiny)))
            worst = max(worst, rel)
            if not rel < SCALE_RTOL:
                check.mismatches.append(f"{name}: per-channel scale rel err {rel:.3g} >= {SCALE_RTOL:g}")
        n_act = 0
        for quantizer in _act_quantizers(model):  # incl. the residual out_quant, pool_quant and logit_quant
            a_path = quantizer.name
            q = _act_q(quantizer.module, a_path)
            n_act += 1
            for kind in ("quantize", "dequantize"):
                op = _act_op_name(a_path, kind)
                if op not in act_scales:
                    check.mismatches.append(f"{a_path}: no activation {kind} op '{op}' in {path.name}")
                    continue
                rel = abs(act_scales[op] - float(q.scale)) / max(abs(float(q.scale)), np.finfo(np.float32).tiny)
                worst = max(worst, rel)
                if not rel < SCALE_RTOL:
                    check.mismatches.append(f"{a_path}: activation {kind} scale rel err {rel:.3g} >= {SCALE_RTOL:g}")
        check.max_scale_rel_err = worst
        check.notes.append(f"{check.tensors} weight tensors (codes exact, per-channel scales) and "
                           f"{n_act} activation scales compared with the model")
        if not self.runtime_available():
            check.notes.append(NOT_VERIFIED_OFF_MACOS)
        return check

    def verify(self, path: str | Path, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> ParityReport:
        """Run the package with CoreML (macOS only, CPU compute units) and compare with the model."""
        if sys.platform == "darwin":
            _coremltools()  # a missing SDK says which extra installs it
        if not self.runtime_available():
            raise ExportError("CoreML prediction needs macOS with coremltools' CoreML runtime; "
                              "on this machine use check_codes() (stored codes and scales vs the model) instead")
        ct = _coremltools()
        from qnas.exporters.parity import model_reference

        path = Path(path)
        try:
            mlmodel = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ExportError(f"CoreML cannot load {path} ({first[:160]}); re-export the model") from None
        x = images.detach().cpu().float().numpy()
        got = np.concatenate([mlmodel.predict({INPUT_NAME: x[i:i + 1]})[OUTPUT_NAME].reshape(1, -1)
                              for i in range(len(x))])
        report = model_reference(model, images).compare(self.name, torch.from_numpy(got.astype(np.float32)), labels)
        report.notes.append("predicted with CoreML on CPU (compute units CPU_ONLY), fp32 compute precision, batch 1")
        return report

