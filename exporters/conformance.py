"""Checks that an ONNX graph is in TensorRT's explicit-quantization (Q/DQ) form.

TensorRT runs a QuantizeLinear/DequantizeLinear pair as int8 only when the
pair is signed int8 with zero point 0, weights are per-channel on axis 0 (or
per-tensor), activations per-tensor, and nothing sits between a Q and its DQ
(DESIGN.md §5). :func:`check_tensorrt_qdq` lists every departure from that
form, one :class:`Violation` per node and rule; an empty list means conformant.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qnas.quant.errors import ExportError

MIN_OPSET = 13
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm")


@dataclass(frozen=True)
class Violation:
    """One departure from TensorRT's Q/DQ form: the node and the rule it breaks."""

    node: str
    rule: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.node}: {self.rule}" + (f" ({self.detail})" if self.detail else "")


def _load(model_or_path: Any) -> Any:
    import onnx

    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.is_file():
            raise ExportError(f"ONNX file not found: {path}")
        try:
            return onnx.load(str(path))
        except Exception as e:
            raise ExportError(f"cannot read ONNX file {path} ({str(e).splitlines()[0][:120]})") from None
    return model_or_path


def constant_values(graph: Any) -> dict[str, np.ndarray]:
    """Every tensor whose value is fixed in the file: initializers and ``Constant`` node outputs."""
    from onnx import helper, numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute:
            attr = n.attribute[0]
            if attr.name == "value":
                values[n.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
                values[n.output[0]] = np.asarray(helper.get_attribute_value(attr))
    return values


def _node_name(n: Any) -> str:
    return n.name or f"{n.op_type}({n.output[0]})"


def check_tensorrt_qdq(onnx_model_or_path: Any) -> list[Violation]:
    """Every violation of TensorRT's explicit-quantization rules in the graph (empty = conformant).

    Rules: default-domain opset >= 13; Q/DQ signed int8 with an explicit zero
    point that is 0; positive float scales; weight (constant-input) DQ scales
    per-tensor or per-channel on axis 0; activation scales per-tensor; a Q's
    output feeds only DQs and a DQ's input comes from a Q or an int8 constant
    (no op between Q and DQ); every Conv/ConvTranspose/Gemm weight input comes
    from a DQ."""
    model = _load(onnx_model_or_path)
    graph = model.graph
    out: list[Violation] = []

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        out.append(Violation("<model>", f"opset >= {MIN_OPSET} required", f"default-domain opset is {opset}"))

    consts = constant_values(graph)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    for n in graph.node:
        if n.op_type not in QDQ_OPS:
            continue
        name = _node_name(n)
        src = producer.get(n.input[0])
        # a weight DQ reads constant codes, directly or through an op on them (e.g. Brevitas' Clip)
        is_weight = n.op_type == "DequantizeLinear" and (
            n.input[0] in consts or (src is not None and src.op_type != "QuantizeLinear" and bool(src.input)
                                     and src.input[0] in consts))
        if n.op_type == "QuantizeLinear" and n.input[0] in consts:
            out.append(Violation(name, "weight QuantizeLinear on a float constant; store int8 codes -> DequantizeLinear"))

        # zero point: present, int8, all zero
        zp = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if len(n.input) <= 2 or not n.input[2]:
            if n.op_type == "QuantizeLinear":
                out.append(Violation(name, "zero point must be explicit int8", "missing zero point means uint8"))
            elif is_weight and n.input[0] in consts and consts[n.input[0]].dtype != np.int8:
                out.append(Violation(name, "quantized type must be signed int8", f"codes are {consts[n.input[0]].dtype}"))
        elif zp is None:
            out.append(Violation(name, "zero point must be a constant", n.input[2]))
        else:
            if zp.dtype != np.int8:
                out.append(Violation(name, "quantized type must be signed int8", f"zero point dtype {zp.dtype}"))
            if np.any(zp.astype(np.int64) != 0):
                out.append(Violation(name, "zero point must be 0 (symmetric)",
                                     f"zero point {zp.ravel()[:4].tolist()}"))
        if is_weight and n.input[0] in consts and consts[n.input[0]].dtype != np.int8:
            out.append(Violation(name, "quantized type must be signed int8", f"codes are {consts[n.input[0]].dtype}"))

        # scale: constant, float, positive; granularity
        scale = consts.get(n.input[1])
        if scale is None:
            out.append(Violation(name, "scale must be a constant", n.input[1]))
        else:
            if scale.dtype != np.float32:
                out.append(Violation(name, "scale must be float32", f"dtype {scale.dtype}"))
            if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
                out.append(Violation(name, "scale must be finite and positive"))
            if scale.size > 1:
                axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
                if not is_weight:
                    out.append(Violation(name, "activation scale must be per-tensor", f"{scale.size} scales"))
                elif axis != 0:
                    out.append(Violation(name, "per-channel weight scale must be on axis 0", f"axis={axis}"))

        # nothing between Q and DQ
        if n.op_type == "QuantizeLinear":
            for c in consumers.get(n.output[0], []):
                if c.op_type != "DequantizeLinear":
                    out.append(Violation(name, "QuantizeLinear must feed DequantizeLinear directly",
                                         f"feeds {c.op_type} {_node_name(c)}"))
        elif n.input[0] not in consts:
            p = producer.get(n.input[0])
            if p is None:
                out.append(Violation(name, "DequantizeLinear input must come from QuantizeLinear or an int8 constant",
                                     f"graph input {n.input[0]}"))
            elif p.op_type != "QuantizeLinear":
                out.append(Violation(name, "no op between QuantizeLinear and DequantizeLinear",
                                     f"{p.op_type} {_node_name(p)} in between"))

    for n in graph.node:
        if n.op_type in WEIGHTED_OPS and len(n.input) > 1:
            p = producer.get(n.input[1])
            if p is None or p.op_type != "DequantizeLinear":
                what = "a float constant" if n.input[1] in consts else (p.op_type if p is not None else "a graph input")
                out.append(Violation(_node_name(n), f"{n.op_type} weight must come from DequantizeLinear", f"comes from {what}"))
    return out


def assert_conformant(onnx_model_or_path: Any) -> None:
    """Raise :class:`ExportError` (one line) unless the graph is in TensorRT's Q/DQ form."""
    violations = check_tensorrt_qdq(onnx_model_or_path)
    if violations:
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        raise ExportError(f"ONNX graph is not in TensorRT Q/DQ form: {violations[0]}{more}; "
                          "export it with the 'tensorrt' backend")
