"""Measure a latency table on the user's own device: a *kit* of one-layer models plus a standalone runner.

``qnas latency kit --backend onnx|tflite|coreml|tensorrt --space S.yaml --out KIT/`` runs
:func:`write_kit`: every distinct layer key of the space (:func:`~qnas.latency.table.space_layer_keys`, the
keys a table must price) is written as the small model the target runs for that layer, in the form the
backend's exporter writes it, next to a runner that needs nothing of qnas. On the device::

    python KIT/run_onnx.py --threads 1          # onnxruntime (numpy + onnxruntime only)
    python KIT/run_tflite.py --threads 1        # LiteRT interpreter (numpy + ai-edge-litert only)
    bash KIT/run_android.sh --threads 4         # Android: adb + LiteRT's benchmark_model
    bash KIT/run_trtexec.sh                     # TensorRT / Jetson: trtexec
    python KIT/run_coreml.py                    # CoreML, on a Mac (numpy + coremltools only)

writes ``KIT/results.csv``; back where qnas is installed, ``qnas latency import KIT/results.csv --out
T.json`` (:func:`import_kit_results`) checks it against ``KIT/manifest.json`` and builds the table.

Kit layout (schema ``qnas-latency-kit`` version 1)
--------------------------------------------------
``manifest.json``::

    {"schema": "qnas-latency-kit", "version": 1, "kit_id": "<uuid>", "backend": "tflite",
     "created": ..., "qnas_version": ..., "target_profile": "edgetpu", "space": {<space config>},
     "archs": null, "runners": ["run_tflite.py", "run_android.sh"], "conventions": "...",
     "files":  [{"file": "layers/<slug>.tflite", "op": ..., "inputs": [{"name", "shape", "dtype"}],
                 "written": {"w_bits": 8, "a_bits": 4, "weights": "...", "activations": "..."},
                 "overhead_file": "layers/_overhead/..."  (onnx only)}, ...],
     "layers": [{"file": ..., "op", "cin", "cout", "hw", "k", "stride", "groups", "w_bits", "a_bits",
                 "name": "s0.b1.dw", "input_shape": [...], "written_bits": {"w_bits", "a_bits"},
                 "target": {"profile", "unit", "w_bits", "a_bits", "how"} or null}, ...]}

``layers`` holds one entry per table key (the key fields are the searched bits, what
:class:`~qnas.latency.table.TableLatencyModel` looks up); ``files`` one entry per distinct model. Keys
whose models the exporter writes identically share one file (e.g. on TFLite, ONNX and TensorRT the
weights of every bit width are stored as int8, so W2/W4/W8 at the same activation bits are one file),
and each runner times a file once and writes a row per key. ``layers.tsv`` repeats ``layers`` for the
shell runners (file, then the key fields). ``target`` is the precision map of ``target_profile`` (the
backend's default: :data:`qnas.exporters.targets.DEFAULT_TARGET_PROFILES`) for that layer: where and at
which bits the target runs it (``native``, ``upcast`` to a wider container, or ``host`` fallback);
it is informational, the file is what the exporter writes for the searched bits.

What each backend writes (a layer's own input quantizer is charged to it, the Relu after the stem,
expand and depthwise convs too, the next layer's quantizer to the next layer, as in
:mod:`qnas.latency.layer_measure`; weights are random, shapes and bits are the key's; a key names no
activation, so layers of spaces with relu6 / h-swish are written with a Relu, as ``qnas latency
measure`` prices them):

* ``onnx``: the QCDQ graph of :func:`qnas.latency.layer_measure.layer_onnx` (what the onnx exporter
  writes: int8 ``Q -> [Clip] -> DQ`` activations, int8 weight codes ``-> Clip -> DQ``, float BN/Relu,
  float add/pool), plus an Identity model per input shape the runner uses to subtract the cost of one
  ``run()`` as ``qnas latency measure`` does;
* ``tensorrt``: the same graph rewritten by the tensorrt exporter's
  :func:`~qnas.exporters.tensorrt_onnx.to_tensorrt_qdq` (sub-8-bit activations as a float Clip before an
  int8 Q/DQ, weights int8), with an int8 Q/DQ after each conv/fc output (the next layer's quantizer, so
  TensorRT picks the int8-output kernel it uses inside the network), checked TensorRT-conformant;
* ``tflite``: the tflite exporter's PT2E reference modules (:class:`~qnas.exporters.tflite_litert.QAct`,
  :class:`~qnas.exporters.tflite_litert.QLayer`: BN folded, weights int8 ``k * code``, a sub-8-bit input
  clamped with MINIMUM/MAXIMUM) converted by litert-torch in static Q/DQ mode, NHWC int8 input and output
  (inside the network no QUANTIZE/DEQUANTIZE or TRANSPOSE runs per layer);
* ``coreml``: an ML program (iOS18, fp32 compute, no optimisation passes) written op by op as the coreml
  exporter writes it: int8 / int4 / 2-bit LUT constexpr weights, ``[clip ->] quantize -> dequantize``
  input, ``batch_norm``, ``relu``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from qnas.errors import ConfigError, LatencyTableError, QnasError
from qnas.quant.plan import WEIGHTED_OPS, LayerSpec

if TYPE_CHECKING:
    from qnas.arch import Arch
    from qnas.latency.importers import ImportResult
    from qnas.space import SearchSpace

SCHEMA = "qnas-latency-kit"
RESULTS_SCHEMA = "qnas-latency-kit-results"
VERSION = 1
BACKENDS = ("onnx", "tflite", "coreml", "tensorrt")
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage", "tensorrt": ".onnx"}
#: the runners written into a kit of each backend (templates in qnas/latency/kit_runners)
RUNNERS: dict[str, tuple[str, ...]] = {"onnx": ("run_onnx.py",), "tflite": ("run_tflite.py", "run_android.sh"),
                                       "coreml": ("run_coreml.py",), "tensorrt": ("run_trtexec.sh",)}
KEY_FIELDS = ("op", "cin", "cout", "hw", "k", "stride", "groups", "w_bits", "a_bits")
FLOAT_BITS = 16
RUNNER_DIR = Path(__file__).with_name("kit_runners")
_COMMON_MARK = "#@COMMON@"
_HOW_TO_RUN = {
    "onnx": "python run_onnx.py --threads 1        (needs numpy + onnxruntime; --providers for other EPs)",
    "tflite": ("python run_tflite.py --threads 1      (needs numpy + ai-edge-litert; --delegate LIB)\n"
               "  bash run_android.sh --threads 1       (Android over adb with LiteRT's benchmark_model)"),
    "coreml": "python run_coreml.py --compute-units ALL   (macOS; needs numpy + coremltools)",
    "tensorrt": "bash run_trtexec.sh                   (needs TensorRT's trtexec, e.g. on a Jetson)",
}


# ---- which bits a backend writes -----------------------------------------------------------------
def _is_float(bits: int) -> bool:
    return bits >= FLOAT_BITS


def written_bits(backend: str, layer: LayerSpec) -> tuple[int, int]:
    """``(w, a)`` of the model the ``backend`` exporter writes for ``layer``: ``w`` the weight container
    (int8 = 8 on onnx/tflite/tensorrt for every width, coreml int8 / int4 / 2-bit LUT; 32 = float), ``a``
    the activation bits its input quantizer clamps to in an int8 container (32 = float). Weightless ops
    (add, pool, mul) run on float tensors between Q/DQ pairs except on tflite (int8)."""
    if layer.op not in WEIGHTED_OPS:
        return (8, 8) if backend == "tflite" else (32, 32)
    w, a = layer.w_bits, layer.a_bits
    if _is_float(w):
        wc = 32
    elif backend == "coreml":
        wc = 2 if w <= 2 else 4 if w <= 4 else 8
    else:
        wc = 8
    return wc, 32 if _is_float(a) else a


def _written_text(backend: str, layer: LayerSpec, wc: int, ac: int) -> tuple[str, str]:
    if layer.op not in WEIGHTED_OPS:
        return "none", ("int8 tensors" if backend == "tflite" else "float (between the producers' Q/DQ)")
    if wc == 32:
        weights = "float32"
    elif backend == "coreml":
        weights = {8: "int8 codes + per-channel scale (constexpr_blockwise_shift_scale)",
                   4: "int4 codes + per-channel scale (constexpr_blockwise_shift_scale)",
                   2: "2-bit LUT palettized (constexpr_lut_to_dense)"}[wc]
    elif backend == "tflite":
        weights = "int8 per-channel (sub-8-bit codes times k: TFLite stores no sub-8-bit weights)"
    else:
        weights = "int8 per-channel codes (sub-8-bit codes within their narrow range)"
    if ac == 32:
        acts = "float"
    elif ac >= 8:
        acts = "int8 Q/DQ"
    else:
        lo, hi = -(2 ** (ac - 1)), 2 ** (ac - 1) - 1
        acts = {"onnx": f"int8 QuantizeLinear -> Clip [{lo}, {hi}] -> DequantizeLinear",
                "tensorrt": f"float Clip to [{lo}, {hi}] steps -> int8 Q/DQ",
                "tflite": f"int8 with MINIMUM/MAXIMUM clamp to [{lo}, {hi}]",
                "coreml": f"clip to [{lo}, {hi}] steps -> int8 quantize/dequantize"}[backend]
    return weights, acts


def _check_layer(backend: str, layer: LayerSpec) -> None:
    for name, b in (("w_bits", layer.w_bits), ("a_bits", layer.a_bits)):
        if not (1 < b <= 8 or _is_float(b)):
            raise LatencyTableError(f"cannot write layer {layer.name!r} key {layer.key()}: {name}={b}; the exporters "
                                    f"write 2-8 bits (or >= {FLOAT_BITS}: float)")
    if backend in ("tflite", "coreml") and layer.op in WEIGHTED_OPS and (_is_float(layer.w_bits) or _is_float(layer.a_bits)):
        raise LatencyTableError(f"the {backend} exporter writes quantized layers only; layer {layer.name!r} key "
                                f"{layer.key()} is float: use a space with integer bits, or --backend onnx")


def _form(backend: str, layer: LayerSpec) -> tuple:
    return (layer.op, layer.cin, layer.cout, layer.hw_in, layer.k, layer.stride, layer.groups) + written_bits(backend, layer)


def _slug(form: tuple) -> str:
    op, cin, cout, hw, k, stride, groups, w, a = form
    return f"{op}_i{cin}_o{cout}_hw{hw}_k{k}_s{stride}_g{groups}_w{w}a{a}"


def _input_shapes(layer: LayerSpec, nhwc: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    c, h = layer.cin, layer.hw_in
    fmap = (1, h, h, c) if nhwc else (1, c, h, h)
    if layer.op == "fc":
        return [("input", (1, c))]
    if layer.op == "add":
        return [("input", fmap), ("residual", fmap)]
    if layer.op == "mul":  # the squeeze-excite gate, one value per channel
        return [("input", fmap), ("gate", (1, 1, 1, c) if nhwc else (1, c, 1, 1))]
    return [("input", fmap)]


def _act_scale(bits: int) -> float:
    return 4.0 / 2 ** (min(bits, 8) - 1)


# ---- one-layer model writers, one per backend --------------------------------------------------
def _write_onnx(layer: LayerSpec, path: Path) -> list[dict[str, Any]]:
    from qnas.latency.layer_measure import layer_onnx

    model = layer_onnx(layer)
    path.write_bytes(model.SerializeToString())
    return [{"name": n, "shape": list(s), "dtype": "float32"} for n, s in _input_shapes(layer)]


def _write_tensorrt(layer: LayerSpec, path: Path) -> list[dict[str, Any]]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from qnas.exporters.conformance import assert_conformant
    from qnas.exporters.tensorrt_onnx import to_tensorrt_qdq
    from qnas.latency.layer_measure import layer_onnx

    model = layer_onnx(layer)
    g = model.graph
    if layer.op in WEIGHTED_OPS:  # the next layer's int8 quantizer: TensorRT fuses it into an int8-output kernel
        out = g.output[0]
        name, dims = out.name, [d.dim_value for d in out.type.tensor_type.shape.dim]
        g.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "out_scale"),
                              numpy_helper.from_array(np.array(0, np.int8), "out_zp")])
        g.node.extend([helper.make_node("QuantizeLinear", [name, "out_scale", "out_zp"], ["out_q"]),
                       helper.make_node("DequantizeLinear", ["out_q", "out_scale", "out_zp"], ["output"])])
        del g.output[:]
        g.output.append(helper.make_tensor_value_info("output", TensorProto.FLOAT, dims))
    model, _ = to_tensorrt_qdq(model)
    onnx.checker.check_model(model)
    assert_conformant(model)
    path.write_bytes(model.SerializeToString())
    return [{"name": n, "shape": list(s), "dtype": "float32"} for n, s in _input_shapes(layer)]


def _relu_after(layer: LayerSpec) -> bool:
    from qnas.latency.layer_measure import _relu_after as relu_after

    return relu_after(layer)


def _tflite_module(layer: LayerSpec, rng: np.random.Generator) -> Any:
    import torch
    from torch import nn

    from qnas.exporters.tflite_litert import INT8_MAX, INT8_MIN, FoldedWeight, QAct, QLayer

    def act(bits: int, relu: bool = False) -> QAct:
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if bits < 8 else (INT8_MIN, INT8_MAX)
        return QAct(_act_scale(bits), 0 if relu else lo, hi)

    l = layer
    if l.op in WEIGHTED_OPS:
        m = 2 ** (l.w_bits - 1) - 1
        shape = (l.cout, l.cin) if l.op == "fc" else (l.cout, l.cin // l.groups, l.k, l.k)
        codes = torch.from_numpy(rng.integers(-m, m + 1, size=shape).astype(np.int8))
        fw = FoldedWeight(codes, torch.from_numpy((rng.random(l.cout) * 0.01 + 0.001).astype(np.float32)),
                          torch.from_numpy((0.1 * rng.standard_normal(l.cout)).astype(np.float32)), l.w_bits, m)
        relu = l.op != "fc" and _relu_after(l)
        conv = None if l.op == "fc" else dict(stride=l.stride, padding=l.k // 2, groups=l.groups)
        qlayer = QLayer(l.name, fw, act(8, relu), relu, conv, (l.w_bits, l.a_bits))

        class One(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inp, self.layer = act(l.a_bits), qlayer

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if conv is None:
                    return self.layer(self.inp(x))
                return self.layer(self.inp(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        return One()

    class Weightless(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.out = QAct(0.05), QAct(0.04), QAct(0.06)
            self.gate = QAct(1 / 127, 0, INT8_MAX)  # a squeeze-excite gate in [0, 1]

        def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
            if l.op == "pool":  # MEAN over H, W (NHWC) requantized to the classifier's input quantizer
                return self.out(torch.mean(self.a(x), dim=(1, 2)))
            if l.op == "add":  # residual ADD of two int8 tensors, requantized to the consumer
                return self.out(self.a(x) + self.b(y))
            return self.out(self.a(x) * self.gate(y))  # mul: feature map times the squeeze-excite gate
    return Weightless()


def _write_tflite(layer: LayerSpec, path: Path) -> list[dict[str, Any]]:
    import logging

    import torch

    from qnas.exporters.base import import_sdk, quiet_native_output
    from qnas.exporters.tflite_litert import EXTRA, _static_quant_config, interpreter

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    rng = np.random.default_rng(0)
    module = _tflite_module(layer, rng).eval()
    examples = tuple(torch.from_numpy(rng.standard_normal(s).astype(np.float32))
                     for _, s in _input_shapes(layer, nhwc=True))
    with quiet_native_output():  # litert-torch and TF print progress and C++ logs
        litert_torch = import_sdk("litert_torch", EXTRA)
        logging.getLogger("litert_torch").setLevel(logging.ERROR)
        edge = litert_torch.convert(module, examples, quant_config=_static_quant_config())
        if hasattr(edge, "tflite_model"):
            path.write_bytes(bytes(edge.tflite_model()))
        else:
            edge.export(str(path))
    it = interpreter(path, delegates=False)  # it loads, and its inputs are what the runner feeds
    return [{"name": str(d["name"]), "shape": [int(s) for s in d["shape"]], "dtype": np.dtype(d["dtype"]).name}
            for d in it.get_input_details()]


def _write_coreml(layer: LayerSpec, path: Path) -> list[dict[str, Any]]:
    from qnas.exporters.coreml_mlprogram import _coremltools, _quiet_progress, _save_package

    ct = _coremltools()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    rng = np.random.default_rng(0)
    l = layer
    wc, _ = written_bits("coreml", l)
    inputs = _input_shapes(l)

    def act(x: Any, bits: int, tag: str) -> Any:
        s = np.float32(_act_scale(bits))
        if bits < 8:
            x = mb.clip(x=x, alpha=np.float32(-(2 ** (bits - 1)) * s), beta=np.float32((2 ** (bits - 1) - 1) * s),
                        name=f"{tag}_clip")
        x = mb.quantize(input=x, scale=s, zero_point=np.int8(0), output_dtype="int8", name=f"{tag}_quantize")
        return mb.dequantize(input=x, scale=s, zero_point=np.int8(0), name=f"{tag}_dequantize")

    def weight(shape: tuple[int, ...]) -> Any:
        m = 2 ** (l.w_bits - 1) - 1
        codes = rng.integers(-m, m + 1, size=shape)
        scale = (rng.random(shape[0]) * 0.01 + 0.001).astype(np.float32).reshape((shape[0],) + (1,) * (len(shape) - 1))
        if wc == 2:
            lut = (np.arange(-2, 2, dtype=np.float32).reshape(1, 4) * scale.reshape(-1, 1)).astype(np.float32)
            lut = lut.reshape((shape[0],) + (1,) * (len(shape) - 1) + (4, 1))
            return mb.constexpr_lut_to_dense(indices=(codes + 2).astype(types.np_uint2_dtype), lut=lut, name="weight")
        data = codes.astype(types.np_int4_dtype if wc == 4 else np.int8)
        return mb.constexpr_blockwise_shift_scale(data=data, scale=scale, name="weight")

    def body(x: Any, y: Any = None) -> Any:
        if l.op == "fc":
            return mb.linear(x=act(x, l.a_bits, "input"), weight=weight((l.cout, l.cin)),
                             bias=(0.01 * rng.standard_normal(l.cout)).astype(np.float32), name="fc")
        if l.op in WEIGHTED_OPS:
            p = l.k // 2
            x = mb.conv(x=act(x, l.a_bits, "input"), weight=weight((l.cout, l.cin // l.groups, l.k, l.k)),
                        strides=[l.stride, l.stride], pad_type="custom", pad=[p, p, p, p], dilations=[1, 1],
                        groups=l.groups, name="conv")
            f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
            x = mb.batch_norm(x=x, mean=f32(0.1 * rng.standard_normal(l.cout)), variance=f32(1 + rng.random(l.cout)),
                              gamma=f32(1 + 0.1 * rng.standard_normal(l.cout)), beta=f32(0.1 * rng.standard_normal(l.cout)),
                              epsilon=np.float32(1e-5), name="bn")
            return mb.relu(x=x, name="relu") if _relu_after(l) else x
        if l.op == "pool":
            return mb.reduce_mean(x=x, axes=[2, 3], keep_dims=False, name="pool")
        if l.op == "add":
            return mb.add(x=y, y=x, name="add")
        return mb.mul(x=x, y=y, name="mul")

    specs = [mb.TensorSpec(shape=s, dtype=types.fp32) for _, s in inputs]
    if len(inputs) == 1:
        @mb.program(input_specs=specs, opset_version=ct.target.iOS18)
        def prog(input):  # noqa: A002 - the input's name in the model
            return body(input)
    elif l.op == "add":
        @mb.program(input_specs=specs, opset_version=ct.target.iOS18)
        def prog(input, residual):  # noqa: A002
            return body(input, residual)
    else:
        @mb.program(input_specs=specs, opset_version=ct.target.iOS18)
        def prog(input, gate):  # noqa: A002
            return body(input, gate)
    with _quiet_progress():
        mlmodel = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18,
                             compute_precision=ct.precision.FLOAT32, pass_pipeline=ct.PassPipeline.EMPTY,
                             skip_model_load=True)
    mlmodel.short_description = f"qnas latency kit layer {_slug(_form('coreml', l))}"
    _save_package(mlmodel, path, overwrite=False)
    return [{"name": n, "shape": list(s), "dtype": "float32"} for n, s in inputs]


_WRITERS: dict[str, Callable[[LayerSpec, Path], list[dict[str, Any]]]] = {
    "onnx": _write_onnx, "tensorrt": _write_tensorrt, "tflite": _write_tflite, "coreml": _write_coreml}


def _write_identity(shape: tuple[int, ...], path: Path) -> None:
    from qnas.latency.layer_measure import _identity_onnx

    path.write_bytes(_identity_onnx(shape).SerializeToString())


# ---- the precision map of the target profile ---------------------------------------------------
def _target_of(profile: Any, layer: LayerSpec) -> dict[str, Any]:
    """Where and at which bits the target profile runs ``layer`` (its precision map, per layer)."""
    try:
        exe = profile.resolve_layer(layer)
    except QnasError as e:
        return {"profile": profile.name, "error": str(e)}
    how = ("host" if exe.unit != profile.primary_unit
           else "native" if (exe.w_bits, exe.a_bits) == (layer.w_bits, layer.a_bits) or layer.op not in WEIGHTED_OPS
           else "upcast")
    return {"profile": profile.name, "unit": exe.unit, "w_bits": int(exe.w_bits), "a_bits": int(exe.a_bits),
            "how": how}


def resolve_kit_target(backend: str, target_profile: str | None) -> str | None:
    """``None``/``"default"`` -> the backend's default target profile (None for onnx); ``"none"`` -> None."""
    from qnas.exporters.targets import DEFAULT_TARGET_PROFILES

    if target_profile in (None, "", "default"):
        return DEFAULT_TARGET_PROFILES.get(backend)
    if target_profile == "none":
        return None
    return target_profile


# ---- writing the kit ---------------------------------------------------------------------------
@dataclass
class KitResult:
    """What :func:`write_kit` wrote."""

    path: Path
    backend: str
    n_layers: int
    n_files: int
    runners: tuple[str, ...]
    target_profile: str | None
    mapped: int = 0
    """keys the target profile runs at other bits than searched, or on the host"""
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"wrote kit {self.path}: {self.n_layers} distinct layer keys as {self.n_files} {self.backend} layer "
               f"models (keys the exporter writes identically share one), runner(s) {', '.join(self.runners)}"]
        if self.target_profile:
            out.append(f"  precision map on {self.target_profile}: {self.mapped} of {self.n_layers} keys run at other "
                       "bits or on the host (manifest.json 'target'); the files hold what the exporter writes")
        out += [f"  {n}" for n in self.notes]
        out.append(f"measure on the device: cd {self.path} && " + _HOW_TO_RUN[self.backend].split("  ")[0].strip())
        out.append(f"then here: qnas latency import {self.path / 'results.csv'} --out table.json")
        return out


def _as_space(space: Any) -> "SearchSpace":
    from qnas.space import SearchSpace, SpaceConfig

    if space is None:
        return SearchSpace()
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, SpaceConfig):
        return SearchSpace(space)
    if isinstance(space, (str, Path)):
        return SearchSpace.from_yaml(space)
    raise ConfigError(f"space must be a SearchSpace, SpaceConfig or YAML path, got {type(space).__name__}")


def check_kit_out(out_dir: str | Path, overwrite: bool) -> Path:
    """Refuse (one line, before any work) an ``out_dir`` that is a file, or a non-empty folder unless ``overwrite``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder; choose another --out for the kit")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    return out


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown kit backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def runner_source(name: str) -> str:
    """The text of runner ``name`` as written into a kit (the common part inlined into Python runners)."""
    text = (RUNNER_DIR / name).read_text(encoding="utf-8")
    if _COMMON_MARK in text:
        common = (RUNNER_DIR / "common.py").read_text(encoding="utf-8")
        text = text.replace(_COMMON_MARK, common.rstrip("\n"))
    return text


def _conventions(backend: str) -> str:
    return (f"one model per distinct layer as the {backend} exporter writes it (batch 1, random weights, the "
            "key's shapes and bits); a layer's own input quantizer and the Relu after it are charged to it, the "
            "next layer's quantizer to the next layer; activations are written as Relu (keys name none); key "
            "fields are the searched bits; see qnas/latency/kit.py")


def write_kit(backend: str, space: Any = None, out_dir: str | Path = "kit", target_profile: str | None = None,
              overwrite: bool = False, progress: bool = True, archs: Iterable["Arch"] | None = None,
              log: Callable[[str], Any] | None = None) -> KitResult:
    """Write a latency kit for ``backend`` into ``out_dir`` (module docstring): every distinct layer key of
    ``space`` (a SearchSpace, SpaceConfig or YAML path; default: the embedded space), or of ``archs`` only,
    as the one-layer model the backend's exporter writes, ``manifest.json``, ``layers.tsv``, the runner(s)
    and a README.txt. ``target_profile``: the profile whose precision map the manifest records (None: the
    backend's default, ``"none"``: no map). Refuses an existing non-empty ``out_dir`` unless ``overwrite``;
    the kit is built in a temporary folder next to it and renamed into place, so a failure leaves nothing."""
    from tqdm import tqdm

    from qnas.latency.profile import load_profile
    from qnas.latency.table import _qnas_version, default_meta, space_layer_keys

    check_backend(backend)
    out = check_kit_out(out_dir, overwrite)
    sp = _as_space(space)
    target = resolve_kit_target(backend, target_profile)
    profile = load_profile(target) if target else None
    archs = list(archs) if archs is not None else None
    layers = space_layer_keys(sp, archs)
    for l in layers:
        _check_layer(backend, l)
    groups: dict[tuple, list[LayerSpec]] = {}
    for l in layers:
        groups.setdefault(_form(backend, l), []).append(l)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        (tmp / "layers").mkdir()
        files, entries, rows = [], [], []
        overheads: dict[tuple, str] = {}
        mapped = 0
        for form, members in tqdm(groups.items(), total=len(groups), desc=f"writing {backend} layers", unit="layer",
                                  disable=not progress, leave=False):
            rep = members[0]
            rel = f"layers/{_slug(form)}{SUFFIX[backend]}"
            try:
                inputs = _WRITERS[backend](rep, tmp / rel)
            except QnasError:
                raise
            except Exception as e:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise LatencyTableError(f"cannot write the {backend} model of layer key {rep.key()} "
                                        f"({type(e).__name__}: {first[:160]}); report this with the key") from None
            wc, ac = form[-2:]
            weights, acts = _written_text(backend, rep, wc, ac)
            entry: dict[str, Any] = {"file": rel, "op": rep.op, "inputs": inputs,
                                     "written": {"w_bits": wc, "a_bits": ac, "weights": weights, "activations": acts}}
            if backend == "onnx":
                shape = tuple(inputs[0]["shape"])
                if shape not in overheads:
                    overheads[shape] = f"layers/_overhead/identity_{'x'.join(map(str, shape))}.onnx"
                    (tmp / "layers" / "_overhead").mkdir(exist_ok=True)
                    _write_identity(shape, tmp / overheads[shape])
                entry["overhead_file"] = overheads[shape]
            files.append(entry)
            for l in members:
                tgt = _target_of(profile, l) if profile is not None else None
                if tgt is not None and tgt.get("how") in ("upcast", "host"):
                    mapped += 1
                entries.append({"file": rel, **dict(zip(KEY_FIELDS, l.key())), "name": l.name,
                                "input_shape": inputs[0]["shape"], "written_bits": {"w_bits": wc, "a_bits": ac},
                                "target": tgt})
                rows.append([rel] + [str(v) for v in l.key()])
        kit_id = str(uuid.uuid4())
        runners = RUNNERS[backend]
        manifest = {"schema": SCHEMA, "version": VERSION, "kit_id": kit_id, "backend": backend,
                    "created": default_meta()["created"], "qnas_version": _qnas_version(),
                    "target_profile": target, "space": sp.to_dict(),
                    "archs": None if archs is None else len(archs), "runners": list(runners),
                    "conventions": _conventions(backend), "files": files, "layers": entries}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        buf = io.StringIO()
        w = csv.writer(buf, delimiter="\t", lineterminator="\n")
        w.writerow(("file",) + KEY_FIELDS)
        w.writerows(rows)
        (tmp / "layers.tsv").write_text(buf.getvalue(), encoding="utf-8")
        for name in runners:
            p = tmp / name
            p.write_text(runner_source(name), encoding="utf-8")
            p.chmod(0o755)
        (tmp / "README.txt").write_text(
            f"qnas latency kit ({backend}): {len(entries)} layer keys in {len(files)} layer models, kit id {kit_id}\n"
            f"Copy this folder to the device and run, inside it:\n  {_HOW_TO_RUN[backend]}\n"
            "(--help lists the options: threads, warm-up, repeats ...). It writes results.csv; then, where qnas is "
            "installed:\n  qnas latency import results.csv --out table.json\n"
            f"Conventions: {_conventions(backend)}.\n", encoding="utf-8")
        if out.exists():  # empty, or replaced with --force: move the old one aside, then rename the new one in
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, trash / "kit")
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(trash / "kit", out)
                raise
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = KitResult(out, backend, len(entries), len(files), runners, target, mapped)
    if backend == "coreml":
        result.notes.append("CoreML prediction needs macOS: run run_coreml.py on a Mac")
    if log is not None:
        for line in result.lines():
            log(line)
    return result


# ---- importing a runner's results --------------------------------------------------------------
def _read_meta(path: Path) -> dict[str, Any] | None:
    """The ``# meta:`` JSON of a CSV (None without one, or when it is not JSON)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for _, line in zip(range(20), f):
                s = line.strip()
                if s.startswith("# meta:"):
                    try:
                        m = json.loads(s[len("# meta:"):])
                    except json.JSONDecodeError:
                        return None
                    return m if isinstance(m, dict) else None
    except (OSError, UnicodeDecodeError):
        return None
    return None


def is_kit_results(path: str | Path) -> bool:
    """Whether ``path`` is a results CSV a kit runner wrote (its meta names :data:`RESULTS_SCHEMA`)."""
    meta = _read_meta(Path(path))
    kit = meta.get("kit") if meta else None
    return isinstance(kit, dict) and kit.get("schema") == RESULTS_SCHEMA


def _failed_lines(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if line.startswith("# failed:"):
            name, _, why = line[len("# failed:"):].strip().partition(": ")
            out[name] = why
    return out


def import_kit_results(src: str | Path, *, device: str | None = None, manifest: str | Path | None = None) -> "ImportResult":
    """Build a table from a kit runner's results CSV. ``manifest`` (default: ``manifest.json`` next to the
    CSV, when there) is checked: the results must come from that kit (same ``kit_id``) and give every layer
    key of it a time, else :class:`LatencyTableError` lists the missing ones (and why the runner failed on
    them). The table's ``meta.device`` is the runner's (its host and runtime) unless ``device`` is given."""
    from collections import Counter

    from qnas.latency.importers import ImportResult
    from qnas.latency.table import LatencyTable, _parse_csv, _qnas_version, format_key

    path = Path(src)
    if not path.is_file():
        raise LatencyTableError(f"kit results not found: {path}; run the kit's runner on the device first")
    meta = _read_meta(path)
    kit = meta.get("kit") if meta else None
    if not isinstance(kit, dict) or kit.get("schema") != RESULTS_SCHEMA:
        raise LatencyTableError(f"{path} is not a kit runner's results CSV (no '# meta:' line naming "
                                f"{RESULTS_SCHEMA!r}); pass --format csv for another per-layer CSV")
    if int(kit.get("version") or 0) > VERSION:
        raise LatencyTableError(f"{path} is kit-results version {kit.get('version')}, this qnas reads up to "
                                f"{VERSION}; upgrade qnas")
    parsed = _parse_csv(path.read_text(encoding="utf-8-sig"), str(path))
    failed = _failed_lines(path)
    mpath = Path(manifest) if manifest is not None else path.parent / "manifest.json"
    notes = []
    extra = 0
    man: dict[str, Any] | None = None
    if mpath.is_file():
        try:
            man = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise LatencyTableError(f"cannot read the kit manifest {mpath} ({type(e).__name__}); pass the "
                                    "results of an intact kit") from None
        if not isinstance(man, dict) or man.get("schema") != SCHEMA:
            raise LatencyTableError(f"{mpath} is not a qnas latency kit manifest")
        if kit.get("kit_id") and man.get("kit_id") and kit["kit_id"] != man["kit_id"]:
            raise LatencyTableError(f"{path} was measured with another kit (kit id {kit['kit_id']}) than {mpath} "
                                    f"({man['kit_id']}); import the results next to their own manifest")
        want = {tuple(e[k] for k in KEY_FIELDS): e["file"] for e in man.get("layers", [])}
        missing = [(k, f) for k, f in want.items() if k not in parsed]
        if missing:
            by_file: dict[str, list[tuple]] = {}
            for k, f in missing:
                by_file.setdefault(f, []).append(k)
            shown = "; ".join(
                f"{f} ({len(ks)} key(s): {format_key(ks[0])}" + (" ..." if len(ks) > 1 else "") + ")"
                + (f" failed on the device: {failed[f]}" if f in failed else " not timed")
                for f, ks in list(by_file.items())[:20])
            more = f"; and {len(by_file) - 20} more files" if len(by_file) > 20 else ""
            raise LatencyTableError(f"{path} has no time for {len(missing)} of the {len(want)} layer keys of the kit "
                                    f"({mpath}), from {len(by_file)} layer file(s): {shown}{more}; re-run the runner "
                                    "on the device (without --only) and import again")
        extra = sum(1 for k in parsed if k not in want)
        notes.append(f"checked against {mpath}: all {len(want)} layer keys of the kit have a time")
        if extra:
            notes.append(f"{extra} row(s) are not in the manifest (kept)")
    else:
        notes.append(f"no manifest.json next to {path.name}: coverage not checked against the kit")
    backend = kit.get("backend")
    runner_notes = (meta or {}).get("notes") or ""
    table_meta = {k: v for k, v in (meta or {}).items() if k not in ("kit", "notes")}
    table_meta.update({
        "device": device or (meta or {}).get("device") or f"kit ({backend})",
        "notes": f"measured with a qnas latency kit ({backend}, runner {kit.get('runner')}): {runner_notes}",
        "qnas_version": _qnas_version(),
        "kit": {**{k: v for k, v in kit.items() if k != "schema"},
                **({"target_profile": man.get("target_profile"), "layers": len(man.get("layers", [])),
                    "qnas_version": man.get("qnas_version")} if man is not None else {})},
        "source_file": path.name,
    })
    if failed and not mpath.is_file():
        notes.append(f"{len(failed)} layer file(s) failed on the device ('# failed:' lines): "
                     + "; ".join(f"{f}: {why}" for f, why in list(failed.items())[:5]))
    table = LatencyTable(dict(parsed.items()), meta=table_meta)
    return ImportResult(table, str(path), "kit", rows=len(parsed), skipped=Counter(), notes=notes)


__all__ = ["BACKENDS", "KitResult", "RESULTS_SCHEMA", "SCHEMA", "check_kit_out", "import_kit_results",
           "is_kit_results", "resolve_kit_target", "runner_source", "write_kit", "written_bits"]
