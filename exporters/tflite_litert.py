"""TFLite export via litert-torch: full-integer int8 (Edge TPU style), run here with
ai-edge-litert's interpreter.

How the learned quantization reaches the file (nothing is re-calibrated):

1. :func:`build_reference` turns the trained Brevitas :class:`~qnas.quant.build.QuantNet`
   into a plain-torch module in PT2E's *converted* form: every quantizer becomes an
   explicit ``quantized_decomposed.quantize_per_tensor -> dequantize_per_tensor`` pair
   with the learned scale (zero point 0), every weight a
   ``quantize_per_channel -> dequantize_per_channel`` pair whose float value is exactly
   ``code * scale``, so the codes come back unchanged.
2. BatchNorm is folded into the preceding conv without touching the codes: per output
   channel the weight scale is multiplied by ``|gamma / sqrt(var + eps)|`` (a negative
   factor negates that channel's codes, exact for the symmetric narrow range) and the
   folded bias ``beta - mean * gamma / sqrt(var + eps)`` becomes the conv bias (int32 in
   the file, scale ``in_scale * w_scale`` as TFLite requires).
3. The module is converted with ``litert_torch.convert(..., quant_config=QuantConfig(
   pt2e_quantizer=...))``: the quant config only switches the converter into its static
   Q/DQ mode (``qdq_conversion_mode="STATIC"``), which turns the existing Q/DQ pairs
   into int8 TFLite ops. No PT2E ``prepare/convert`` (no observers) runs.

Mapping decisions (reported per layer by :meth:`TFLiteLitertExporter.export_with_report`):

* TFLite int8 tensors always span ``[-128, 127]``; a 4-bit activation becomes int8 with
  its learned scale plus an integer ``MINIMUM``/``MAXIMUM`` clamp to ``[-8, 7]``
  (``[0, 7]`` after ReLU), so the codes equal Brevitas' exactly.
* Sub-8-bit weights are stored as int8 (the litert-torch PT2E lowering has no int4 storage
  type, and Edge TPU has no int4 weights). Each output channel is stored as ``k * code`` at
  ``scale / k`` with ``k = 127 // max|code|``: identical weight values, but the int32 bias
  unit ``input scale * weight scale`` and TFLite's requantization step (its double rounding
  errs by up to about one accumulator unit) become ``k`` times finer. Without it a
  2-bit layer after BN folding had an accumulator unit of up to ~9 output codes.
* Every tensor has a learned scale (the model quantizes its residual stream, pooled
  features and logits too): a conv (+ folded BN, + fused ReLU) output is requantized
  straight to the scale of the quantizer consuming it (the next ``act``/``in_quant``, a
  residual block's ``out_quant``, or ``pool_quant``); a residual ``ADD`` takes ``xq``
  (``in_quant`` scale) and ``out_quant``'s output and produces its consumer's scale;
  ``MEAN`` goes from ``pool_quant``'s scale to ``head_quant``'s; ``FULLY_CONNECTED``
  outputs ``logit_quant``'s scale, which is the file's output scale. Nothing is
  calibrated or bounded from data.

Standard mobile-space kinds: ReLU6 is exact (``F.relu6`` before the output Q/DQ); h-swish
runs as TFLite's int8 ``HARD_SWISH``, whose input is the conv/FC output requantized to int8
at ``max(hi * out_scale, 3) / 127`` (the one tensor without a learned quantizer, so not exact:
measured a few logit steps, top-1 identical); the squeeze-excite gate's hard-sigmoid is folded
into its expand conv (weight scales / 6, bias / 6 + 0.5, the [0, 1] clamp by the gate's
integer clamp), the SE is ``MEAN`` -> two ``CONV_2D`` with bias -> ``MUL``; blocks without
expand conv, any stem kernel, the feature-mix conv and the pre-classifier ``FULLY_CONNECTED``
reuse the conv/FC path.

The converter emits int8 input/output tensors. With ``int8_io=False`` (default) the
file gets a float input with a ``QUANTIZE`` op in front and a ``DEQUANTIZE`` op at the
end (added by flatbuffer surgery, :func:`add_float_io`); with ``int8_io=True`` (Edge
TPU) the IO stays int8 and callers quantize with :func:`io_quantization`.
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qnas.exporters.base import (Capabilities, CodeCheck, Exporter, ParityReport, import_sdk,
                                 quiet_native_output, register)
from qnas.exporters.activations import check_activation
from qnas.quant.bn_fold import bn_fold
from qnas.quant.checkpoint import atomic_write
from qnas.quant.errors import ExportError
from qnas.quant.integer_grid import grid_offsets
from qnas.quant.layer_view import QuantLayer, read_act_quant, read_weight_quant

#: the activations after a conv/FC this backend writes
ACTIVATIONS = ("relu", "relu6", "hswish", "hsigmoid")

EXTRA = "tflite"
INT8_MIN, INT8_MAX = -128, 127
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
IO_OPS = ("QUANTIZE", "DEQUANTIZE")

# ---------------------------------------------------------------------------------------
# reading the learned quantization out of the Brevitas model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActQ:
    """A learned per-tensor activation quantizer: ``codes in [lo, hi]``, value ``code * scale``."""

    scale: float
    bits: int
    lo: int
    hi: int


def act_q(module: nn.Module) -> ActQ:
    """Scale, bit width and integer range of a Brevitas ``QuantIdentity``/``QuantReLU``."""
    q = read_act_quant(module)
    if q is None:
        raise ExportError(f"activation quantizer {type(module).__name__} is disabled; TFLite full-integer needs it on")
    if float(q.zero_point.abs().max()) != 0.0:
        raise ExportError("activation zero point is not 0; full-integer TFLite export needs symmetric activations")
    if not q.per_tensor:
        raise ExportError("activation scale is not per-tensor; TFLite int8 activations are per-tensor")
    if q.bits > 8:
        raise ExportError(f"{q.bits}-bit activations do not fit TFLite int8")
    if not q.signed and q.qmax > INT8_MAX:
        raise ExportError(f"unsigned {q.bits}-bit activations do not fit TFLite int8")
    return ActQ(q.scale_value, q.bits, q.qmin, q.qmax)


@dataclass
class FoldedWeight:
    """Integer codes and per-output-channel scales of one layer, BatchNorm folded in."""

    codes: torch.Tensor
    """int8, the model's codes with channels negated where the BN factor is negative"""
    scale: torch.Tensor
    """float32 per output channel: weight scale * |BN factor|"""
    bias: torch.Tensor | None
    bits: int
    qmax: int


def weight_codes(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """``(codes int8, per-channel scale, bits, qmax)`` of a Brevitas weight-quantized layer."""
    w = read_weight_quant(layer)
    codes, scale, bits = w.codes, w.scale, w.bits
    if not w.signed:
        raise ExportError(f"{type(layer).__name__}: unsigned weights; TFLite int8 weights are signed")
    if float(w.zero_point.abs().max()) != 0.0:
        raise ExportError(f"{type(layer).__name__}: weight zero point is not 0; TFLite weights are symmetric")
    if bits > 8:
        raise ExportError(f"{bits}-bit weights do not fit TFLite int8")
    cout = codes.shape[0]
    if scale.numel() == 1:
        scale = scale.reshape(1).expand(cout).clone()
    elif scale.numel() != cout:
        raise ExportError(f"{type(layer).__name__}: weight scale is neither per-tensor nor per-output-channel")
    qmax = w.qmax
    if int(codes.abs().max()) > qmax:
        raise ExportError(f"weight codes exceed the {bits}-bit narrow range [-{qmax}, {qmax}]")
    return codes.to(torch.int8), scale.reshape(cout), bits, qmax


def fold_weight(layer: nn.Module, bn: nn.BatchNorm2d | None) -> FoldedWeight:
    """The layer's codes with ``bn`` folded into scales and bias (codes only change sign;
    :func:`qnas.quant.bn_fold.bn_fold`)."""
    codes, scale, bits, qmax = weight_codes(layer)
    bias = None if getattr(layer, "bias", None) is None else layer.bias.detach().float().clone()
    if bn is not None:
        try:
            g, bias = bn_fold(bn, bias)
        except ValueError as e:
            raise ExportError(str(e)) from None
        sign = torch.where(g < 0, -1, 1).to(torch.int8)
        codes = codes * sign.view(-1, *([1] * (codes.dim() - 1)))
        scale = scale * g.abs()
        if bool((scale == 0).any()):
            raise ExportError("a BatchNorm channel has gamma == 0; its folded weight scale would be 0")
    return FoldedWeight(codes.to(torch.int8), scale.float(), bias, bits, qmax)


# ---------------------------------------------------------------------------------------
# the plain-torch reference module in PT2E converted (Q/DQ) form
# ---------------------------------------------------------------------------------------


def _decomposed_ops() -> Any:
    """``torch.ops.quantized_decomposed`` (registered by importing torch's PT2E decomposed ops)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    return torch.ops.quantized_decomposed


def _qdq(x: torch.Tensor, scale: float) -> torch.Tensor:
    qd = _decomposed_ops()
    x = qd.quantize_per_tensor(x, scale, 0, INT8_MIN, INT8_MAX, torch.int8)
    return qd.dequantize_per_tensor(x, scale, 0, INT8_MIN, INT8_MAX, torch.int8)


class QAct(nn.Module):
    """int8 Q/DQ at ``scale``, then (sub-8-bit or ReLU range) an integer clamp to ``[lo, hi]``."""

    def __init__(self, scale: float, lo: int = INT8_MIN, hi: int = INT8_MAX):
        super().__init__()
        self.scale, self.lo, self.hi = float(scale), int(lo), int(hi)

    @property
    def clamped(self) -> bool:
        return self.lo > INT8_MIN or self.hi < INT8_MAX

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _qdq(x, self.scale)
        if self.clamped:
            x = _qdq(torch.clamp(x, self.lo * self.scale, self.hi * self.scale), self.scale)
        return x


def weight_storage_factor(codes: torch.Tensor) -> torch.Tensor:
    """Per output channel, the largest integer ``k`` with ``k * max|code| <= 127`` (127 for an all-zero channel)."""
    amax = codes.reshape(codes.shape[0], -1).abs().amax(1).to(torch.int64)
    return torch.where(amax > 0, 127 // amax.clamp(min=1), torch.full_like(amax, 127))


class QLayer(nn.Module):
    """Conv2d / Linear on Q/DQ'd per-channel weights (float bias), optional ReLU, output Q/DQ.

    ``codes``/``w_scale`` are the model's (BN folded). In the file each channel is stored as
    ``k * codes`` at ``w_scale / k`` (:func:`weight_storage_factor`): the same weight values
    and the same products, but an int32 bias unit (``input scale * weight scale``) ``k`` times
    finer. Sub-8-bit codes leave most of the int8 range free, and BN folding can make that
    unit coarser than the output scale, so without ``k`` the bias would round by whole output codes."""

    def __init__(self, name: str, fw: FoldedWeight, out: QAct, relu: bool, conv: dict[str, Any] | None,
                 requested: tuple[int, int], act: str | None = None, pre_scale: float | None = None):
        super().__init__()
        self.layer_name = name
        self.conv = conv
        self.relu = relu
        self.act = act
        """None/relu (``relu``), relu6, hswish (int8 HARD_SWISH from ``pre_scale``), hsigmoid (folded:
        the weights and bias carry the 1/6 and +0.5, ``out`` clamps to [0, 1])"""
        self.pre_scale = pre_scale
        self.out = out
        self.bits = fw.bits
        self.requested = requested
        """(w_bits, a_bits) of the plan"""
        shape = [-1] + [1] * (fw.codes.dim() - 1)
        k = weight_storage_factor(fw.codes)
        self.register_buffer("codes", fw.codes.clone())
        self.register_buffer("w_scale", fw.scale.clone())
        self.register_buffer("k", k)
        self.register_buffer("stored_scale", (fw.scale.double() / k.double()).float())
        self.register_buffer("w_zp", torch.zeros(fw.scale.numel(), dtype=torch.int64))
        self.register_buffer("w_float", (fw.codes.to(torch.int64) * k.view(shape)).float()
                             * self.stored_scale.view(shape))
        self.register_buffer("bias", (fw.bias if fw.bias is not None else torch.zeros(fw.scale.numel())).float().clone())

    def stored_codes(self) -> torch.Tensor:
        """The int8 codes written to the file: ``k * codes`` per channel."""
        shape = [-1] + [1] * (self.codes.dim() - 1)
        return (self.codes.to(torch.int64) * self.k.view(shape)).to(torch.int8)

    def weight(self) -> torch.Tensor:
        qd = _decomposed_ops()
        w = qd.quantize_per_channel(self.w_float, self.stored_scale, self.w_zp, 0, -127, 127, torch.int8)
        return qd.dequantize_per_channel(w, self.stored_scale, self.w_zp, 0, -127, 127, torch.int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is not None:
            y = F.conv2d(x, self.weight(), self.bias, **self.conv)
        else:
            y = F.linear(x, self.weight(), self.bias)
        if self.relu:
            y = torch.relu(y)
        elif self.act == "relu6":
            y = F.relu6(y)
        elif self.act == "hswish":  # TFLite's int8 HARD_SWISH reads an int8 tensor: quantize first
            y = F.hardswish(_qdq(y, self.pre_scale))
        return self.out(y)


class QSE(nn.Module):
    """Squeeze-excite: ``MEAN`` (requantized to ``in_act``'s scale) -> 1x1 ``reduce`` conv (bias,
    ReLU) -> 1x1 ``expand`` conv (bias, hard-sigmoid folded in) -> ``MUL`` with the feature map,
    requantized to ``out``'s scale (the quantizer feeding the project conv)."""

    def __init__(self, in_act: QAct, reduce: QLayer, expand: QLayer, out: QAct):
        super().__init__()
        self.in_act, self.reduce, self.expand, self.out = in_act, reduce, expand, out

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        g = self.expand(self.reduce(self.in_act(torch.mean(h, dim=(2, 3), keepdim=True))))
        return self.out(h * g)


class QBlock(nn.Module):
    """One MBConv. Its input arrives already quantized at the block's ``in_quant`` scale
    (the producer requantizes straight to it), so that tensor is also ``xq`` of the
    residual. A residual block's ``project`` outputs at ``out_quant``'s scale and the ADD
    requantizes to the next consumer (``add_out``); otherwise ``project`` outputs at the
    next consumer's scale directly."""

    def __init__(self, expand: QLayer | None, dw: QLayer, project: QLayer, residual: bool, add_out: QAct | None,
                 se: QSE | None = None):
        super().__init__()
        if se is None:
            self.expand, self.dw, self.project = expand, dw, project
        else:  # registered in execution order: ref.layers() lists the weights in the file's op order
            self.expand, self.dw, self.se, self.project = expand, dw, se, project
        self.residual = residual
        self.add_out = add_out if add_out is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dw(self.expand(x) if self.expand is not None else x)
        if getattr(self, "se", None) is not None:
            h = self.se(h)
        h = self.project(h)
        return self.add_out(x + h) if self.residual else h


class TFLiteReference(nn.Module):
    """The QuantNet in PT2E converted form (int8 Q/DQ, BN folded); what litert-torch converts.

    Every int8 tensor carries the scale of a learned quantizer: the stem and block outputs
    that of their consumer (next ``in_quant`` or ``pool_quant``), the pooled features
    ``head_quant``'s, the logits ``logit_quant``'s."""

    def __init__(self, input_act: QAct, stem: QLayer, blocks: list[QBlock], head_act: QAct, head: QLayer,
                 mix: QLayer | None = None, pre_head: QLayer | None = None):
        super().__init__()
        self.input_act, self.stem = input_act, stem
        self.blocks = nn.Sequential(*blocks)
        if mix is not None:  # feature-mix 1x1 conv before the pool
            self.mix = mix
        self.head_act = head_act
        if pre_head is not None:  # linear before the classifier
            self.pre_head = pre_head
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.input_act(x)))
        if hasattr(self, "mix"):
            x = self.mix(x)
        x = self.head_act(torch.mean(x, dim=(2, 3)))
        if hasattr(self, "pre_head"):
            x = self.pre_head(x)
        return self.head(x)

    def layers(self) -> list[QLayer]:
        return [m for m in self.modules() if isinstance(m, QLayer)]


def _qact(a: ActQ, relu: bool = False) -> QAct:
    """The learned quantizer as int8 Q/DQ plus clamp (``lo >= 0`` when fed by a ReLU)."""
    return QAct(a.scale, max(0, a.lo) if relu else a.lo, a.hi)


def _out_act(a: ActQ, act: str | None) -> QAct:
    """The output quantizer of a layer ending in ``act``: codes ``>= 0`` after relu/relu6, and
    ``[0, round(1 / scale)]`` after a (folded) hard-sigmoid, whose clamp to [0, 1] it is."""
    if act in ("relu", "relu6"):
        return _qact(a, relu=True)
    if act == "hsigmoid":
        one = int(np.rint(np.float32(1.0) / np.float32(a.scale)))
        return QAct(a.scale, max(0, a.lo), min(a.hi, one))
    return _qact(a)


def build_reference(model: nn.Module) -> TFLiteReference:
    """The plain-torch Q/DQ module equivalent to a trained :class:`QuantNet` (eval mode).

    Nothing is invented: each conv/FC output (BN folded, ReLU fused) and each residual sum
    is requantized straight to the learned quantizer that consumes it
    (:meth:`~qnas.quant.build.QuantNet.quant_layers` names them)."""
    if not callable(getattr(model, "quant_layers", None)):
        raise ExportError(f"TFLite export supports qnas QuantNet models; {type(model).__name__} has no quant_layers()")
    pool = getattr(model, "pool", None)
    if not isinstance(pool, nn.AdaptiveAvgPool2d) or pool.output_size not in (1, (1, 1)):
        raise ExportError("TFLite export expects a global average pool before the head")
    layers = model.quant_layers()
    acts = {layer.name: check_activation(model, layer, "tflite", ACTIVATIONS) for layer in layers}

    def qlayer(layer: QuantLayer) -> QLayer:
        act = acts[layer.name]
        m = layer.module
        conv = dict(stride=m.stride, padding=m.padding, groups=m.groups) if isinstance(m, nn.Conv2d) else None
        # a residual block's last conv outputs at out_quant's scale; the add requantizes to the consumer
        out = layer.residual.quant if layer.residual is not None else layer.output_quant
        a = act_q(out.module)
        fw = fold_weight(m, layer.bn)
        pre_scale = None
        if act == "hsigmoid":  # relu6(y + 3) / 6 = clamp(y / 6 + 0.5, 0, 1): 1/6 into the scales, the clamp by `out`
            bias = fw.bias if fw.bias is not None else torch.zeros(fw.scale.numel())
            fw = FoldedWeight(fw.codes, (fw.scale / 6).float(), bias / 6 + 0.5, fw.bits, fw.qmax)
        elif act == "hswish":  # HARD_SWISH's int8 input: covers [-3, 3] and the output's range
            pre_scale = max(a.hi * a.scale, 3.0) / INT8_MAX
        return QLayer(layer.name, fw, _out_act(a, act), act == "relu", conv,
                      (layer.spec.w_bits, layer.spec.a_bits), act=None if act == "relu" else act, pre_scale=pre_scale)

    stem, *rest, head = layers
    pre_head = rest.pop() if rest and rest[-1].spec.op == "fc" else None
    mix = rest.pop() if rest and rest[-1].block is None else None
    qblocks = []
    for block, members in groupby(rest, key=lambda l: l.block):
        group = list(members)
        se = [l for l in group if l.name.rsplit(".", 2)[-2:-1] == ["se"]]
        main = [l for l in group if l not in se]
        if block is None or len(main) not in (2, 3) or main[-2].spec.op != "dwconv" or len(se) not in (0, 2):
            raise ExportError("TFLite export expects blocks of [expand,] dw, [squeeze-excite,] project layers")
        expand, dw, last = ([None] * (3 - len(main))) + main
        residual = last.residual is not None
        if residual and main[0].module.in_channels != last.module.out_channels:
            raise ExportError(f"{last.block}: residual with different channel counts")
        add_out = _qact(act_q(last.output_quant.module)) if residual else None
        qse = None
        if se:
            reduce, excite = se
            qse = QSE(_qact(act_q(reduce.input_quant.module)), qlayer(reduce), qlayer(excite),
                      _qact(act_q(last.input_quant.module)))
        qblocks.append(QBlock(None if expand is None else qlayer(expand), qlayer(dw), qlayer(last),
                              residual=residual, add_out=add_out, se=qse))
    after_pool = pre_head if pre_head is not None else head
    ref = TFLiteReference(_qact(act_q(stem.input_quant.module)), qlayer(stem), qblocks,
                          _qact(act_q(after_pool.input_quant.module)), qlayer(head),
                          mix=None if mix is None else qlayer(mix), pre_head=None if pre_head is None else qlayer(pre_head))
    return ref.eval()


# ---------------------------------------------------------------------------------------
# flatbuffer helpers (schema from ai_edge_litert)
# ---------------------------------------------------------------------------------------


def _schema() -> Any:
    import_sdk("ai_edge_litert", EXTRA)
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _pack(schema: Any, m: Any) -> bytes:
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _opcode_index(schema: Any, m: Any, builtin: int, version: int) -> int:
    for i, oc in enumerate(m.operatorCodes):
        if max(oc.builtinCode, oc.deprecatedBuiltinCode) == builtin:
            return i
    oc = schema.OperatorCodeT()
    oc.builtinCode = builtin
    oc.deprecatedBuiltinCode = min(builtin, 127)
    oc.version = version
    m.operatorCodes.append(oc)
    return len(m.operatorCodes) - 1


def add_float_io(buf: bytes) -> bytes:
    """Give an int8-IO TFLite model float inputs/outputs: ``QUANTIZE`` in front of every
    int8 input, ``DEQUANTIZE`` after every int8 output (signatures follow)."""
    schema = _schema()
    m = schema.ModelT.InitFromPackedBuf(buf, 0)
    if len(m.subgraphs) != 1:
        raise ExportError("expected a single-subgraph TFLite model")
    sg = m.subgraphs[0]
    q_op = _opcode_index(schema, m, schema.BuiltinOperator.QUANTIZE, 2)
    dq_op = _opcode_index(schema, m, schema.BuiltinOperator.DEQUANTIZE, 2)
    remap: dict[int, int] = {}

    def float_twin(idx: int) -> int:
        t = sg.tensors[idx]
        nt = schema.TensorT()
        nt.shape = list(t.shape) if t.shape is not None else None
        nt.shapeSignature = list(t.shapeSignature) if t.shapeSignature is not None else None
        nt.type = schema.TensorType.FLOAT32
        m.buffers.append(schema.BufferT())
        nt.buffer = len(m.buffers) - 1
        nt.name = t.name
        t.name = (t.name.decode() if isinstance(t.name, bytes) else str(t.name)) + "_int8"
        sg.tensors.append(nt)
        return len(sg.tensors) - 1

    def wrap(ends: list[int], opcode: int, is_input: bool) -> tuple[list[int], list[Any]]:
        """Give each int8 graph input (output) a float twin behind a QUANTIZE (DEQUANTIZE)."""
        new_ends, ops = [], []
        for idx in ends:
            if sg.tensors[idx].type != schema.TensorType.INT8:
                new_ends.append(idx)
                continue
            f = float_twin(idx)
            op = schema.OperatorT()
            op.opcodeIndex = opcode
            op.inputs, op.outputs = ([f], [idx]) if is_input else ([idx], [f])
            ops.append(op)
            remap[idx] = f
            new_ends.append(f)
        return new_ends, ops

    new_inputs, pre = wrap(sg.inputs, q_op, is_input=True)
    new_outputs, post = wrap(sg.outputs, dq_op, is_input=False)
    sg.inputs, sg.outputs = new_inputs, new_outputs
    sg.operators = pre + list(sg.operators) + post
    for sd in m.signatureDefs or []:
        for tm in list(sd.inputs or []) + list(sd.outputs or []):
            tm.tensorIndex = remap.get(tm.tensorIndex, tm.tensorIndex)
    return _pack(schema, m)


# ---------------------------------------------------------------------------------------
# running and inspecting the file
# ---------------------------------------------------------------------------------------


def interpreter(path: str | Path, threads: int = 1, delegates: bool = True) -> Any:
    """An allocated ai-edge-litert interpreter (``delegates=False``: builtin kernels only, ops visible)."""
    mod = sys.modules.get("ai_edge_litert.interpreter")
    if mod is None:
        with quiet_native_output():  # TF's C++ start-up log lines
            mod = import_sdk("ai_edge_litert.interpreter", EXTRA)
    kw: dict[str, Any] = {"model_path": str(path), "num_threads": threads}
    if not delegates:
        kw["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        it = mod.Interpreter(**kw)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ExportError(f"ai-edge-litert cannot load {path} ({str(e).splitlines()[0][:160]}); re-export the model") from None
    return it


def io_quantization(detail: dict[str, Any]) -> tuple[float, int] | None:
    """``(scale, zero_point)`` of an int8 input/output tensor detail, None for float."""
    if detail["dtype"] != np.int8:
        return None
    scale, zp = detail["quantization"]
    return float(scale), int(zp)


def invoke_on(it: Any, inp: dict[str, Any], image: torch.Tensor, qin: tuple[float, int] | None) -> None:
    """Run the interpreter on one image (quantized first when the input is int8, ``qin``)."""
    a = image.reshape(tuple(inp["shape"])).numpy().astype(np.float32)
    if qin is not None:
        a = np.clip(np.rint(a / qin[0]) + qin[1], INT8_MIN, INT8_MAX).astype(np.int8)
    it.set_tensor(inp["index"], a)
    it.invoke()


def run_tflite(path: str | Path, images: torch.Tensor, threads: int = 1) -> torch.Tensor:
    """Float logits of a .tflite (float or int8 IO) on ``images``, one sample at a time."""
    it = interpreter(path, threads)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    qin, qout = io_quantization(inp), io_quantization(out)
    res = []
    for x in images:
        invoke_on(it, inp, x, qin)
        y = it.get_tensor(out["index"]).astype(np.float32)
        if qout is not None:
            y = (y - qout[1]) * qout[0]
        res.append(y.reshape(-1))
    return torch.from_numpy(np.stack(res))


def tflite_activation_codes(path: str | Path, model: nn.Module) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """``images -> codes``: the integer codes (``q - zero_point``, in PyTorch's NCHW layout) of the int8 tensor
    holding each activation quantizer's output, one list entry per quantizer of ``model`` in execution order.

    A quantizer's tensor is the next op output in op order with its scale and size; where ops that keep the
    scale follow on it (the MINIMUM/MAXIMUM clamping a sub-8-bit range), the last of them. Quantizers with no
    such tensor get none, which the caller sees as a count mismatch."""
    from qnas.exporters.parity import quantizer_inputs

    mod = sys.modules.get("ai_edge_litert.interpreter") or import_sdk("ai_edge_litert.interpreter", EXTRA)
    try:
        it = mod.Interpreter(model_path=str(path), num_threads=1, experimental_preserve_all_tensors=True,
                             experimental_op_resolver_type=mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ExportError(f"ai-edge-litert cannot load {path} ({str(e).splitlines()[0][:160]}); re-export the model") from None
    details = {t["index"]: t for t in it.get_tensor_details()}
    ops = ops_of(it)
    inp, qin = it.get_input_details()[0], io_quantization(it.get_input_details()[0])

    def int8_scale(index: int) -> float | None:
        d = details[index]
        scales = d["quantization_parameters"]["scales"]
        return float(scales[0]) if d["dtype"] == np.int8 and len(scales) == 1 else None

    # tensors in the order they are produced: the input (an int8 input holds input_quant's codes), then op outputs
    produced = [(int(inp["index"]), -1)] + [(o.outputs[0], k) for k, o in enumerate(ops) if o.outputs]

    def find(scale: float, size: int, start: int) -> tuple[int, int] | None:
        for pos in range(start, len(produced)):
            index, k = produced[pos]
            s = int8_scale(index)
            if s is not None and abs(s / scale - 1) < 1e-5 and int(np.prod(details[index]["shape"])) == size:
                # follow ops that keep the scale (the clamp of a sub-8-bit range) to the last of them
                while (pos + 1 < len(produced) and index in ops[produced[pos + 1][1]].inputs
                       and int8_scale(produced[pos + 1][0]) == s
                       and int(np.prod(details[produced[pos + 1][0]]["shape"])) == size):
                    pos += 1
                    index = produced[pos][0]
                return pos, index
        return None

    def codes(images: torch.Tensor) -> list[torch.Tensor]:
        ref = quantizer_inputs(model, images[:1])
        tensors, start = [], 0
        for q in ref:
            hit = find(q.scale, q.codes[0].numel(), start) if q.scale else None
            if hit is None:
                return [torch.empty(0) for _ in tensors]  # cannot trace: the caller reports a count mismatch
            start, index = hit[0] + 1, hit[1]
            tensors.append((index, tuple(q.codes.shape[1:])))
        out: list[list[torch.Tensor]] = [[] for _ in tensors]
        for x in images:
            invoke_on(it, inp, x, qin)
            for j, (index, torch_shape) in enumerate(tensors):
                zp = int(details[index]["quantization_parameters"]["zero_points"][0])
                q = torch.from_numpy(it.get_tensor(index).astype(np.float32) - zp)
                if len(torch_shape) == 3:  # NHWC -> CHW
                    q = q.reshape(torch_shape[1], torch_shape[2], torch_shape[0]).permute(2, 0, 1)
                out[j].append(q.reshape(torch_shape))
        return [torch.stack(t) for t in out]
    return codes


def measure_latency_ms(path: str | Path, input_shape: tuple[int, ...], threads: int = 1,
                       warmup: int = 10, repeats: int = 50) -> float:
    """Median ai-edge-litert latency (ms) of one inference at ``input_shape`` (the file's batch size)."""
    it = interpreter(path, threads)
    inp = it.get_input_details()[0]
    if tuple(inp["shape"]) != tuple(input_shape):
        it.resize_tensor_input(inp["index"], list(input_shape))
        it.allocate_tensors()
    rng = np.random.default_rng(0)
    x = rng.standard_normal(input_shape).astype(np.float32)
    if inp["dtype"] == np.int8:
        x = np.clip(np.rint(x * 32), INT8_MIN, INT8_MAX).astype(np.int8)
    for _ in range(warmup):
        it.set_tensor(inp["index"], x)
        it.invoke()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        it.set_tensor(inp["index"], x)
        it.invoke()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


@dataclass
class OpInfo:
    index: int
    op: str
    inputs: list[int]
    outputs: list[int]
    float_tensors: list[str]


def ops_of(it: Any) -> list[OpInfo]:
    """Operators of an interpreter built without delegates, with the float tensors each touches."""
    details = {t["index"]: t for t in it.get_tensor_details()}
    out = []
    for op in it._get_ops_details():
        if op["op_name"] == "DELEGATE":
            continue
        ins = [int(i) for i in op["inputs"] if i >= 0]
        outs = [int(i) for i in op["outputs"] if i >= 0]
        fl = [details[i]["name"] for i in ins + outs if i in details and details[i]["dtype"] in (np.float32, np.float16)]
        out.append(OpInfo(int(op["index"]), op["op_name"], ins, outs, fl))
    return out


def float_ops(ops: list[OpInfo], inputs: list[int], outputs: list[int]) -> list[str]:
    """Ops computing in float, not counting a QUANTIZE of a model input or a DEQUANTIZE to a model output."""
    bad = []
    for o in ops:
        if not o.float_tensors:
            continue
        if o.op == "QUANTIZE" and set(o.inputs) <= set(inputs):
            continue
        if o.op == "DEQUANTIZE" and set(o.outputs) <= set(outputs):
            continue
        bad.append(f"{o.op}#{o.index} ({', '.join(o.float_tensors)[:80]})")
    return bad


def weight_tensors(it: Any) -> list[tuple[str, dict[str, Any], np.ndarray]]:
    """``(op, tensor detail, values)`` of the weight operand of every conv/depthwise/FC op, in file order."""
    details = {t["index"]: t for t in it.get_tensor_details()}
    res = []
    for o in ops_of(it):
        if o.op in WEIGHT_OPS and len(o.inputs) >= 2:
            d = details[o.inputs[1]]
            res.append((o.op, d, np.array(it.get_tensor(d["index"]))))
    return res


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------


@dataclass
class TFLiteLayer:
    layer: str
    op: str
    w_bits: int
    a_bits: int
    runs_as: str

    def __str__(self) -> str:
        return f"{self.layer} [{self.op}] w{self.w_bits}a{self.a_bits} -> {self.runs_as}"


@dataclass
class TFLiteReport:
    path: str
    int8_io: bool
    output_scale: float
    layers: list[TFLiteLayer] = field(default_factory=list)
    float_ops: list[str] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def full_integer(self) -> bool:
        return not self.float_ops

    def lines(self) -> list[str]:
        head = [f"{self.path}: {'full-integer' if self.full_integer else 'NOT full-integer'}, "
                f"{'int8' if self.int8_io else 'float'} input/output, logits scale {self.output_scale:g}"]
        return head + [str(l) for l in self.layers] + [f"float op left: {f}" for f in self.float_ops] + self.notes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "full_integer": self.full_integer}


def _layer_report(ref: TFLiteReference, path: Path, int8_io: bool) -> TFLiteReport:
    it = interpreter(path, delegates=False)
    ops = ops_of(it)
    inputs = [int(d["index"]) for d in it.get_input_details()]
    outputs = [int(d["index"]) for d in it.get_output_details()]
    fl = float_ops(ops, inputs, outputs)
    wops = [o for o in ops if o.op in WEIGHT_OPS]
    layers = ref.layers()
    rep = TFLiteReport(str(path), int8_io, ref.head.out.scale, float_ops=fl)
    for o in ops:
        rep.op_counts[o.op] = rep.op_counts.get(o.op, 0) + 1
    details = {t["index"]: t for t in it.get_tensor_details()}
    for i, l in enumerate(layers):
        op = wops[i] if i < len(wops) else None
        w_bits, a_bits = l.requested
        if op is None:
            rep.layers.append(TFLiteLayer(l.layer_name, "?", w_bits, a_bits, "not found in the file"))
            continue
        wt = details[op.inputs[1]]
        in_t = details[op.inputs[0]]
        if op.float_tensors:
            how = "float"
        else:
            how = f"{np.dtype(in_t['dtype']).name} x {np.dtype(wt['dtype']).name}"
            if w_bits < 8:
                how += (f" (w{w_bits} codes in [-{2 ** (w_bits - 1) - 1}, {2 ** (w_bits - 1) - 1}] stored as int8 "
                        f"k * code at scale / k, k = 127 // max|code| per channel; no int4)")
            if a_bits < 8:
                how += f" (a{a_bits} input clamped to its {a_bits}-bit range by MINIMUM/MAXIMUM)"
        rep.layers.append(TFLiteLayer(l.layer_name, op.op, w_bits, a_bits, how))
    if len(wops) != len(layers):
        rep.notes.append(f"{len(wops)} conv/FC ops in the file for {len(layers)} model layers")
    rep.notes.append("every int8 tensor uses a learned scale: conv/ADD outputs that of the quantizer consuming "
                     "them, MEAN head_quant's, the logits logit_quant's")
    return rep


# ---------------------------------------------------------------------------------------
# the exporter
# ---------------------------------------------------------------------------------------


def _static_quant_config() -> Any:
    """A litert-torch QuantConfig that only puts the converter in static Q/DQ mode."""
    pq = import_sdk("litert_torch.quantize.pt2e_quantizer", EXTRA)
    qc = import_sdk("litert_torch.quantize.quant_config", EXTRA)
    quantizer = pq.PT2EQuantizer().set_global(pq.get_symmetric_quantization_config(is_per_channel=True))
    return qc.QuantConfig(pt2e_quantizer=quantizer)


def convert_reference(ref: TFLiteReference, example: torch.Tensor) -> bytes:
    """litert-torch conversion of the Q/DQ reference module to int8-IO TFLite bytes."""
    import logging
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with quiet_native_output():  # litert-torch and TF print progress and C++ logs to stdout/stderr
        litert_torch = import_sdk("litert_torch", EXTRA)
        logging.getLogger("litert_torch").setLevel(logging.ERROR)
        edge = litert_torch.convert(ref, (example,), quant_config=_static_quant_config())
        if hasattr(edge, "tflite_model"):
            return bytes(edge.tflite_model())
        import tempfile

        with tempfile.TemporaryDirectory(prefix="qnas_tfl_") as d:
            p = Path(d) / "m.tflite"
            edge.export(str(p))
            return p.read_bytes()


@register("tflite")
class TFLiteLitertExporter(Exporter):
    """Full-integer int8 TFLite via litert-torch, verified with ai-edge-litert.

    ``int8_io=True`` keeps int8 input/output tensors (Edge TPU); the default wraps them
    in float ``QUANTIZE``/``DEQUANTIZE``; the logits scale is the model's ``logit_quant``
    scale. :meth:`export_with_report` also returns the per-layer mapping (:class:`TFLiteReport`)."""

    suffix = ".tflite"
    extra = EXTRA
    capabilities = Capabilities(check_codes=True, layer_report=True)

    def __init__(self, int8_io: bool = False):
        self.int8_io = bool(int8_io)

    def runtime_available(self) -> bool:
        try:
            import_sdk("ai_edge_litert.interpreter", EXTRA)
            return True
        except ExportError:
            return False

    def export_with_report(self, model: nn.Module, example_input: torch.Tensor, out: str | Path,
                           overwrite: bool = False) -> tuple[Path, TFLiteReport]:
        out = Path(out)
        if out.exists() and not overwrite:
            raise ExportError(f"{out} already exists; choose another path or pass overwrite=True (--force)")
        with quiet_native_output():  # the SDKs' import-time log lines
            import_sdk("litert_torch", EXTRA)
            import_sdk("ai_edge_litert", EXTRA)
        was_training = model.training
        model.eval()
        try:
            ref = build_reference(model)
            example = example_input[:1].detach().float()
            try:
                blob = convert_reference(ref, example)
            except ExportError:
                raise
            except Exception as e:
                raise ExportError(f"litert-torch conversion failed ({type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0][:160] if str(e).strip() else ''})") from None
            if not self.int8_io:
                blob = add_float_io(blob)
            path = atomic_write(out, lambda tmp: Path(tmp).write_bytes(blob), overwrite=overwrite)
        finally:
            model.train(was_training)
        return path, _layer_report(ref, path, self.int8_io)

    def verify(self, path: str | Path, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> ParityReport:
        from qnas.exporters.parity import model_reference

        got = run_tflite(path, images)
        report = model_reference(model, images).compare(self.name, got, labels, tflite_activation_codes(path, model))
        it = interpreter(path, delegates=False)
        out = it.get_output_details()[0]
        q = io_quantization(out)
        scale = q[0] if q is not None else _dequantize_scale(it, out)
        if scale and report.logit_step and abs(scale / report.logit_step - 1) > 1e-6:
            report.notes.append(f"the file's output scale {scale:g} differs from the model's logit step "
                                f"{report.logit_step:g}")
        report.notes.append(f"run with ai-edge-litert {getattr(import_sdk('ai_edge_litert', EXTRA), '__version__', '')} "
                            f"interpreter, {'int8' if q is not None else 'float'} input/output")
        off = max((o.max_offset_steps for o in grid_offsets(model)), default=0.0)
        if off > 0.01:
            report.notes.append(f"the model's biases lie up to {off:.2f} accumulator steps off their int32 grid, so the "
                                f"integer file rounds them differently; finish the model with `qnas finish` (or call "
                                f"qnas.quant.integer_grid.snap_biases) to make them exact")
        return report

    def measure_latency_ms(self, path: str | Path, input_shape: tuple[int, ...]) -> float | None:
        return measure_latency_ms(path, input_shape)

    def check_codes(self, path: str | Path, model: nn.Module) -> CodeCheck:
        """Weight codes and per-channel scales in the file vs the model's, BatchNorm folded the
        same way as export: codes equal up to the sign of the BN factor, scales equal
        ``w_scale * |gamma / sqrt(var + eps)|`` (relative error reported)."""
        was_training = model.training
        model.eval()
        try:
            ref = build_reference(model)
        finally:
            model.train(was_training)
        it = interpreter(path, delegates=False)
        found = weight_tensors(it)
        layers = ref.layers()
        check = CodeCheck(self.name, 0)
        if len(found) != len(layers):
            check.mismatches.append(f"{len(found)} conv/FC weight tensors in the file, model has {len(layers)}")
        for l, (op, d, vals) in zip(layers, found):
            check.tensors += 1
            codes = l.codes.numpy()
            if op == "CONV_2D":
                exp = codes.transpose(0, 2, 3, 1)  # OIHW -> OHWI
            elif op == "DEPTHWISE_CONV_2D":
                exp = codes.transpose(1, 2, 3, 0)  # C1HW -> 1HWC
            else:
                exp = codes
            qp = d["quantization_parameters"]
            scales = np.asarray(qp["scales"], np.float64)
            zps = np.asarray(qp["zero_points"])
            if d["dtype"] != np.int8:
                check.mismatches.append(f"{l.layer_name}: weights stored as {np.dtype(d['dtype']).name}, not int8")
                continue
            if vals.shape != exp.shape:
                check.mismatches.append(f"{l.layer_name}: shape {tuple(vals.shape)} in the file, expected {tuple(exp.shape)}")
                continue
            kshape = (-1,) + (1,) * (exp.ndim - 1)
            k = l.k.numpy().reshape(kshape)
            if op == "DEPTHWISE_CONV_2D":
                k = k.reshape(1, 1, 1, -1)
            n_bad = int((vals.astype(np.int32) != exp.astype(np.int32) * k).sum())
            if n_bad:
                check.mismatches.append(f"{l.layer_name}: {n_bad}/{exp.size} integer codes differ")
            want = l.w_scale.double().numpy() / l.k.double().numpy()
            if scales.size != want.size:
                check.mismatches.append(f"{l.layer_name}: {scales.size} scales in the file, expected {want.size}")
                continue
            rel = float(np.max(np.abs(scales - want) / np.abs(want)))
            check.max_scale_rel_err = max(check.max_scale_rel_err, rel)
            if rel > 1e-6:
                check.mismatches.append(f"{l.layer_name}: scales differ (max rel err {rel:.2e})")
            if zps.size and np.any(zps != 0):
                check.mismatches.append(f"{l.layer_name}: non-zero weight zero points")
        check.notes.append("scales compared after BatchNorm folding: file scale = learned weight scale * "
                           "|gamma/sqrt(var+eps)| / k, file codes = k * codes, negated on channels with a negative "
                           "BN factor (k: per-channel integer storage factor, 127 // max|code|)")
        return check


def _dequantize_scale(it: Any, out_detail: dict[str, Any]) -> float | None:
    """Scale of the int8 tensor a float output is dequantized from (float-IO files)."""
    details = {t["index"]: t for t in it.get_tensor_details()}
    for o in ops_of(it):
        if o.op == "DEQUANTIZE" and out_detail["index"] in o.outputs:
            s = details[o.inputs[0]]["quantization"][0]
            return float(s) if s else None
    return None
