"""TensorRT export: Brevitas QCDQ ONNX rewritten into TensorRT's explicit-quantization form.

Brevitas writes sub-8-bit tensors as int8 ``QuantizeLinear -> Clip ->
DequantizeLinear``; TensorRT wants nothing between a Q and its DQ. The rewrite
(:func:`to_tensorrt_qdq`) keeps the numerics of the searched model exactly:

* weights: the int8 codes are constants already inside the narrow range, so
  the Clip is dropped after checking that (weight ``Q(float) -> DQ`` chains are
  first folded into int8 codes -> DQ);
* activations: the Clip's integer range moves in front of the
  QuantizeLinear as a float ``Clip(min=qmin*scale, max=qmax*scale)``, so a
  4-bit activation becomes "float clip then int8 Q/DQ" and TensorRT runs it as
  int8 with the same values;
* every Q/DQ is signed int8 with zero point 0 (uint8 with zero point 128 is
  converted; any other zero point is refused).

The result is checked with :func:`qnas.exporters.conformance.check_tensorrt_qdq`
and verified with onnxruntime on CPU. :func:`build_engine` builds a TensorRT
engine when ``tensorrt`` and a CUDA GPU are present (imported lazily).
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from qnas.exporters.base import Capabilities, Exporter, ParityReport, register
from qnas.exporters.conformance import assert_conformant, check_tensorrt_qdq, constant_values
from qnas.exporters.onnx_qcdq import OnnxQcdqExporter, measure_latency_ms, verify_in_ort
from qnas.quant.checkpoint import atomic_write
from qnas.quant.errors import ExportError


@dataclass
class LayerMapping:
    """How one quantizer of the model is expressed for TensorRT."""

    layer: str
    """module path, e.g. ``s0.b0.act2`` or ``s0.b0.dw`` (weights: the layer's plan name)"""
    kind: str
    """``"weight"`` or ``"activation"``"""
    node: str
    """the DequantizeLinear (weights) / QuantizeLinear (activations) node in the file"""
    requested_bits: int
    runs_as: str

    def __str__(self) -> str:
        return f"{self.layer} [{self.kind}] {'w' if self.kind == 'weight' else 'a'}{self.requested_bits} -> {self.runs_as}"


@dataclass
class TensorRTReport:
    """Per-layer mapping of one TensorRT export."""

    path: str
    layers: list[LayerMapping] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def sub8_activations(self) -> list[LayerMapping]:
        return [m for m in self.layers if m.kind == "activation" and m.requested_bits < 8]

    def lines(self) -> list[str]:
        return [str(m) for m in self.layers] + self.notes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantizer_paths(model: nn.Module) -> list[str]:
    """Module paths of every quantizer of a QuantNet that Brevitas writes as Q/DQ nodes: each
    weight layer (its plan name), the activation quantizer feeding it, and the stream quantizers.
    Empty for another Brevitas model (its report then reads the names from the ONNX scopes)."""
    if not callable(getattr(model, "quant_layers", None)):
        return []
    layers = model.quant_layers()
    return ([layer.name for layer in layers] + [layer.input_quant.name for layer in layers]
            + [q.name for q in model.stream_quants()])


def _layer_name(node_name: str, quantizers: Iterable[str] = ()) -> str:
    """The module path of the quantizer an exported Q/DQ node belongs to.

    Brevitas names nodes by module scope (``/s0/b0/act2/act_quant/export_handler/QuantizeLinear``);
    the longest of ``quantizers`` whose scope prefixes the node name wins (``s0.b0.act2``).
    Without a match the scope is read directly: ``/blocks/blocks.0/act2/...`` -> ``blocks.0.act2``."""
    matches = [q for q in quantizers if node_name.startswith("/" + q.replace(".", "/") + "/")]
    if matches:
        return max(matches, key=len)
    parts = [p for p in node_name.split("/") if p]
    keep: list[str] = []
    for p in parts:
        if p in ("act_quant", "weight_quant", "export_handler", "input_quant_handler") or p.startswith(("QuantizeLinear", "DequantizeLinear", "Clip")):
            break
        if keep and p.startswith(keep[-1] + "."):
            keep[-1] = p
        elif keep and "." in p:
            keep = [p]
        else:
            keep.append(p)
    return ".".join(keep) or node_name


def _bits(lo: int, hi: int) -> int:
    return max(1, math.ceil(math.log2(hi - lo + 1)))


class _Graph:
    """Mutable view of an ONNX graph with constant lookup and fresh names."""

    def __init__(self, model: Any):
        from onnx import numpy_helper

        self.model = model
        self.g = model.graph
        self._nh = numpy_helper
        # Constant nodes -> initializers, so every constant is looked up the same way
        for n in [n for n in self.g.node if n.op_type == "Constant"]:
            vals = constant_values(type(self.g)(node=[n]))
            if n.output[0] in vals:
                self.g.initializer.append(numpy_helper.from_array(np.asarray(vals[n.output[0]]), n.output[0]))
                self.g.node.remove(n)
        self.inits = {t.name: t for t in self.g.initializer}
        self._n = 0

    def const(self, name: str) -> np.ndarray | None:
        t = self.inits.get(name)
        return None if t is None else self._nh.to_array(t)

    def add_const(self, hint: str, value: np.ndarray) -> str:
        self._n += 1
        name = f"{hint}__trt{self._n}"
        t = self._nh.from_array(np.asarray(value), name)
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}__trt{self._n}"

    def producers(self) -> dict[str, Any]:
        return {o: n for n in self.g.node for o in n.output}

    def consumers(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for n in self.g.node:
            for i in n.input:
                out.setdefault(i, []).append(n)
        return out

    def replace_uses(self, old: str, new: str) -> None:
        for n in self.g.node:
            for k, i in enumerate(n.input):
                if i == old:
                    n.input[k] = new

    def prune(self) -> None:
        """Drop nodes whose outputs nobody uses, then unused initializers."""
        outputs = {o.name for o in self.g.output}
        while True:
            used = {i for n in self.g.node for i in n.input} | outputs
            dead = [n for n in self.g.node if not any(o in used for o in n.output)]
            if not dead:
                break
            for n in dead:
                self.g.node.remove(n)
        used = {i for n in self.g.node for i in n.input} | outputs
        for t in [t for t in self.g.initializer if t.name not in used]:
            self.g.initializer.remove(t)
            self.inits.pop(t.name, None)


def _axis(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 1)


def _bcast(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def _fold_identities(G: _Graph) -> None:
    """``Identity(initializer)`` (Brevitas' deduplicated BN parameters) -> the initializer itself."""
    outputs = {o.name for o in G.g.output}
    for n in [n for n in G.g.node if n.op_type == "Identity" and n.input[0] in G.inits and n.output[0] not in outputs]:
        G.replace_uses(n.output[0], n.input[0])
        G.g.node.remove(n)


def _fold_weight_q(G: _Graph) -> None:
    """Constant float weight ``Q -> DQ`` -> int8 codes initializer ``-> DQ``."""
    for q in [n for n in G.g.node if n.op_type == "QuantizeLinear" and n.input[0] in G.inits]:
        w = G.const(q.input[0]).astype(np.float32)
        scale = G.const(q.input[1])
        zp = G.const(q.input[2]) if len(q.input) > 2 and q.input[2] else np.zeros((), np.uint8)
        if scale is None or zp is None:
            raise ExportError(f"{q.name}: weight QuantizeLinear with non-constant scale/zero point; cannot fold")
        ax = _axis(q) % w.ndim
        lo, hi = (-128, 127) if zp.dtype == np.int8 else (0, 255)
        codes = np.clip(np.rint(w / _bcast(scale, w.ndim, ax)) + _bcast(zp.astype(np.float32), w.ndim, ax), lo, hi)
        G.replace_uses(q.output[0], G.add_const(q.input[0] + "_codes", codes.astype(zp.dtype)))
        G.g.node.remove(q)


def _normalize_zero_points(G: _Graph) -> None:
    """Every Q/DQ gets an explicit int8 zero point 0; uint8 with zero point 128 is shifted to int8."""
    prod = G.producers()
    for n in [n for n in G.g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]:
        scale = G.const(n.input[1])
        if scale is None:
            raise ExportError(f"{n.name}: non-constant scale; TensorRT needs constant Q/DQ scales")
        has_zp = len(n.input) > 2 and bool(n.input[2])
        zp = G.const(n.input[2]) if has_zp else None
        if has_zp and zp is None:
            raise ExportError(f"{n.name}: non-constant zero point; TensorRT needs constant zero point 0")
        if zp is not None and zp.dtype == np.int8:
            if np.any(zp != 0):
                raise ExportError(f"{n.name}: zero point {zp.ravel()[:4].tolist()} is not 0; TensorRT supports only "
                                  "symmetric quantization (re-train with zero-point-0 quantizers)")
            continue
        if zp is None:  # implicit zero point: uint8 0 for Q, input type for DQ
            src = G.const(n.input[0]) if n.op_type == "DequantizeLinear" else None
            if src is not None and src.dtype == np.int8:
                zp = np.zeros_like(scale, dtype=np.int8)
            else:
                zp = np.zeros_like(scale, dtype=np.uint8)
        if zp.dtype == np.int8:
            pass
        elif zp.dtype == np.uint8 and np.all(zp == 128):
            # uint8 codes c with zero point 128 are int8 codes c-128 with zero point 0 (same values)
            if n.op_type == "DequantizeLinear":
                p = prod.get(n.input[0])
                if n.input[0] in G.inits:
                    c = G.const(n.input[0]).astype(np.int16) - 128
                    n.input[0] = G.add_const(n.input[0], c.astype(np.int8))
                elif p is not None and p.op_type == "Clip":
                    for k in (1, 2):
                        if len(p.input) > k and p.input[k]:
                            b = G.const(p.input[k])
                            p.input[k] = G.add_const(p.input[k], (b.astype(np.int16) - 128).astype(np.int8))
        else:
            raise ExportError(f"{n.name}: {zp.dtype} zero point {zp.ravel()[:4].tolist()} is asymmetric; TensorRT "
                              "supports only signed int8 with zero point 0")
        while len(n.input) < 3:
            n.input.append("")
        n.input[2] = G.add_const((n.input[1] or n.name) + "_zp", np.zeros_like(scale, dtype=np.int8))


def to_tensorrt_qdq(model: Any, quantizers: Iterable[str] = ()) -> tuple[Any, list[LayerMapping]]:
    """Rewrite a QCDQ ONNX ``ModelProto`` in place into TensorRT's Q/DQ form; return it and the per-layer
    mapping, named by the model's ``quantizers`` (:func:`quantizer_paths`) where given."""
    from onnx import helper

    quantizers = tuple(quantizers)

    G = _Graph(model)
    _fold_identities(G)
    _fold_weight_q(G)
    _normalize_zero_points(G)
    mapping: list[LayerMapping] = []
    prod = G.producers()
    cons = G.consumers()

    for dq in [n for n in G.g.node if n.op_type == "DequantizeLinear"]:
        src = dq.input[0]
        p = prod.get(src)
        if src in G.inits:  # weight, no restriction: full int8
            mapping.append(LayerMapping(_layer_name(dq.name, quantizers), "weight", dq.name, 8,
                                        "int8 per-channel weights"))
            continue
        if p is None:
            continue
        if p.op_type == "QuantizeLinear":  # activation at 8 bits
            mapping.append(LayerMapping(_layer_name(p.name, quantizers), "activation", p.name, 8, "int8"))
            continue
        if p.op_type != "Clip":
            raise ExportError(f"{dq.name}: {p.op_type} between quantizer and DequantizeLinear; cannot map to TensorRT")
        clip = p
        lo_a, hi_a = G.const(clip.input[1]), G.const(clip.input[2])
        if lo_a is None or hi_a is None:
            raise ExportError(f"{clip.name}: Clip bounds are not constant; cannot map to TensorRT")
        lo, hi = int(lo_a), int(hi_a)
        bits = _bits(lo, hi)
        inner = clip.input[0]
        if len(cons.get(clip.output[0], [])) != 1:
            raise ExportError(f"{clip.name}: integer Clip feeds more than one node; cannot map to TensorRT")
        if inner in G.inits:  # weight codes: already inside the range -> drop the Clip
            codes = G.const(inner)
            if codes.min() < lo or codes.max() > hi:
                raise ExportError(f"{clip.name}: weight codes [{codes.min()}, {codes.max()}] outside the {bits}-bit "
                                  f"range [{lo}, {hi}]; re-export the model")
            dq.input[0] = inner
            G.g.node.remove(clip)
            note = "int8 per-channel weights" if bits >= 8 else f"int8 per-channel weights (codes in [{lo}, {hi}])"
            mapping.append(LayerMapping(_layer_name(dq.name, quantizers), "weight", dq.name, bits, note))
            continue
        q = prod.get(inner)
        if q is None or q.op_type != "QuantizeLinear":
            raise ExportError(f"{clip.name}: integer Clip not fed by QuantizeLinear; cannot map to TensorRT")
        if len(cons.get(q.output[0], [])) != 1:
            raise ExportError(f"{q.name}: QuantizeLinear feeds more than the Clip; cannot map to TensorRT")
        scale = G.const(q.input[1]).astype(np.float32)
        if scale.size != 1:
            raise ExportError(f"{q.name}: activation scale is per-channel; TensorRT needs per-tensor activation scales")
        if not np.array_equal(G.const(dq.input[1]).astype(np.float32), scale):
            raise ExportError(f"{q.name}: Q and DQ scales differ; cannot map to TensorRT")
        s = np.float32(scale.reshape(()))
        fmin, fmax = np.float32(lo) * s, np.float32(hi) * s
        fclip_out = G.fresh(q.input[0] + "_clipped")
        fclip = helper.make_node("Clip", [q.input[0], G.add_const(q.name + "_min", np.asarray(fmin, np.float32)),
                                          G.add_const(q.name + "_max", np.asarray(fmax, np.float32))],
                                 [fclip_out], name=q.name + "_trt_float_clip")
        q.input[0] = fclip_out
        dq.input[0] = q.output[0]
        idx = list(G.g.node).index(q)
        G.g.node.insert(idx, fclip)
        G.g.node.remove(clip)
        prod = G.producers()
        cons = G.consumers()
        mapping.append(LayerMapping(_layer_name(q.name, quantizers), "activation", q.name, bits,
                                    f"int8 with float clip [{float(fmin):g}, {float(fmax):g}] (codes [{lo}, {hi}])"))
    G.prune()
    return model, mapping


def rewrite_file(src: str | Path, dst: str | Path, overwrite: bool = False,
                 quantizers: Iterable[str] = ()) -> TensorRTReport:
    """Rewrite a QCDQ ONNX file into TensorRT's Q/DQ form at ``dst`` (atomic); raises if not conformant after.
    ``quantizers``: the exported model's quantizer paths (:func:`quantizer_paths`), to name the report's layers."""
    import onnx

    model = onnx.load(str(src))
    model, mapping = to_tensorrt_qdq(model, quantizers)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ExportError(f"rewritten TensorRT ONNX is invalid ({str(e).splitlines()[0][:160]})") from None
    assert_conformant(model)
    atomic_write(dst, lambda tmp: onnx.save(model, str(tmp)), overwrite=overwrite)
    notes = []
    n8 = [m for m in mapping if m.requested_bits < 8]
    if n8:
        notes.append(f"{len(n8)} sub-8-bit quantizer(s) run as int8 in TensorRT with their searched ranges kept "
                     "(weights: codes already in range; activations: float Clip before the int8 Q)")
    return TensorRTReport(str(dst), mapping, notes)


@register("tensorrt")
class TensorRTOnnxExporter(Exporter):
    """ONNX in TensorRT's explicit-quantization form (signed int8, zero point 0, per-channel weights on axis 0).

    ``export`` returns the path; :meth:`export_with_report` also returns the per-layer
    mapping (:class:`TensorRTReport`)."""

    suffix = ".onnx"
    extra = "tensorrt"
    capabilities = Capabilities(layer_report=True)

    def __init__(self, opset: int = 13):
        self.opset = OnnxQcdqExporter(opset).opset  # the QCDQ file it rewrites: opsets 13-20 (Q/DQ needs >= 13)

    def export_with_report(self, model: nn.Module, example_input: torch.Tensor, out: str | Path,
                           overwrite: bool = False) -> tuple[Path, TensorRTReport]:
        out = Path(out)
        if out.exists() and not overwrite:
            raise ExportError(f"{out} already exists; choose another path or pass overwrite=True (--force)")
        with tempfile.TemporaryDirectory(prefix="qnas_trt_") as tmp:
            qcdq = OnnxQcdqExporter(self.opset).export(model, example_input, Path(tmp) / "qcdq.onnx", overwrite=True)
            report = rewrite_file(qcdq, out, overwrite=overwrite, quantizers=quantizer_paths(model))
        return out, report

    def verify(self, path: str | Path, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> ParityReport:
        """Run the TensorRT-form ONNX in onnxruntime (CPU) against the PyTorch model."""
        import onnx

        violations = check_tensorrt_qdq(path)
        report = verify_in_ort(self.name, path, model, images, labels)
        out_scale = output_scale(onnx.load(str(path)))
        if out_scale is None:
            report.notes.append("the graph's output is float (no output DequantizeLinear)")
        elif report.logit_step and abs(out_scale / report.logit_step - 1) > 1e-6:
            report.notes.append(f"the file's output scale {out_scale:g} differs from the model's logit step "
                                f"{report.logit_step:g}")
        report.notes.append("conformant TensorRT Q/DQ graph" if not violations
                            else f"NOT TensorRT-conformant: {violations[0]} (+{len(violations) - 1} more)")
        report.notes.append("numerics checked with onnxruntime (CPU) on the exact graph TensorRT parses; "
                            "no TensorRT engine was built or run by verify (see build_engine, needs tensorrt + CUDA GPU)")
        return report

    def measure_latency_ms(self, path: str | Path, input_shape: tuple[int, ...]) -> float | None:
        """onnxruntime CPU latency of the TensorRT-form graph (not a TensorRT engine's)."""
        return measure_latency_ms(path, input_shape)


def output_scale(model: Any) -> float | None:
    """The per-tensor scale of the DequantizeLinear producing the first graph output, if there is one."""
    consts = constant_values(model.graph)
    prod = {o: n for n in model.graph.node for o in n.output}
    p = prod.get(model.graph.output[0].name)
    while p is not None and p.op_type in ("Identity", "Flatten", "Reshape"):
        p = prod.get(p.input[0])
    if p is not None and p.op_type == "DequantizeLinear":
        s = consts.get(p.input[1])
        if s is not None and s.size == 1:
            return float(s)
    return None


def build_engine(onnx_path: str | Path, out: str | Path, max_batch: int = 256, overwrite: bool = False) -> Path:
    """Build a TensorRT int8 engine from a TensorRT-form ONNX file (needs ``tensorrt`` and a CUDA GPU)."""
    try:
        import tensorrt as trt
    except ImportError:
        raise ExportError("building a TensorRT engine needs the 'tensorrt' package (pip install qnas[tensorrt])") from None
    if not torch.cuda.is_available():
        raise ExportError("building a TensorRT engine needs a CUDA GPU; none is visible")
    assert_conformant(onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {onnx_path}: {errs[:200]}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        inp = network.get_input(i)
        shape = list(inp.shape)
        if any(d < 0 for d in shape):
            lo = [1 if d < 0 else d for d in shape]
            hi = [max_batch if d < 0 else d for d in shape]
            profile.set_shape(inp.name, lo, lo, hi)
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ExportError(f"TensorRT engine build failed for {onnx_path}")
    return atomic_write(out, lambda tmp: Path(tmp).write_bytes(bytes(blob)), overwrite=overwrite)


def run_engine(engine_path: str | Path, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits of a serialized TensorRT engine on ``images`` (CUDA; TensorRT >= 10 tensor API)."""
    import tensorrt as trt

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
    ctx = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    in_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    out_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    stream = torch.cuda.Stream()
    outs = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].float().cuda().contiguous()
        ctx.set_input_shape(in_name, tuple(x.shape))
        y = torch.empty(tuple(ctx.get_tensor_shape(out_name)), dtype=torch.float32, device="cuda")
        ctx.set_tensor_address(in_name, x.data_ptr())
        ctx.set_tensor_address(out_name, y.data_ptr())
        ctx.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        outs.append(y.cpu())
    return torch.cat(outs)
