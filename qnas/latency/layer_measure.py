"""Measure a latency table on this machine: one tiny ONNX model per layer key,
timed in onnxruntime (CPU execution provider, batch 1).

Each layer is built with ``onnx.helper`` (much faster than a Brevitas export
per layer) in the form it takes inside a model exported by qnas'
``onnx`` exporter (Brevitas ``export_onnx_qcdq``, opset 13):

* input activation (``a_bits`` <= 8): ``QuantizeLinear -> [Clip] -> DequantizeLinear``,
  per-tensor scale, int8 zero point 0; the Clip to ``[-2^(b-1), 2^(b-1)-1]``
  is present only below 8 bits;
* weights (``w_bits`` <= 8): int8 initializer ``-> Clip`` to the narrow range
  ``[-(2^(b-1)-1), 2^(b-1)-1]`` ``-> DequantizeLinear`` (per-channel scales and
  int8 zero points, ``axis=0``);
* conv/dwconv/pwconv: ``Conv`` (no bias, ``group``, pads ``k//2``) ``-> BatchNormalization``
  ``-> Relu`` for the stem, expand and depthwise convs (not for project);
  fc: ``Gemm(transB=1)`` with a float bias; add: float ``Add`` of two tensors;
  pool: ``GlobalAveragePool -> Flatten``.
* Bits >= 16 mean float: no Q/DQ on that side.

As in the exported models (``keep_initializers_as_inputs=False``), BatchNormalization
parameters are constants that onnxruntime may fold into the conv; pass
``bn_params_as_inputs=True`` to price graphs from exporters that list them as inputs.
A layer's own input quantizer is charged to it; the Relu before the next
layer's quantizer is charged to the layer that produced it.
"""
from __future__ import annotations

import math
import platform
import statistics
import time
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from qnas.errors import LatencyTableError
from qnas.latency._compat import target_or_device
from qnas.quant.plan import LayerSpec

if TYPE_CHECKING:
    import onnx

    from qnas.arch import Arch
    from qnas.latency.table import LatencyTable
    from qnas.space import SearchSpace

OPSET = 13
IR_VERSION = 7  # what torch.onnx (dynamo=False) writes for opset 13
FLOAT_BITS = 16  # bits >= this are priced as float32


def _relu_after(layer: LayerSpec) -> bool:
    """Whether the real network has a Relu right after this layer's BN."""
    if layer.op in ("conv", "dwconv"):
        return True
    if layer.op != "pwconv":
        return False
    if layer.name.endswith(".project"):
        return False
    if layer.name.endswith(".expand"):
        return True
    return layer.cout > layer.cin  # expand widens, project narrows


def _check_bits(layer: LayerSpec) -> None:
    for name, b in (("w_bits", layer.w_bits), ("a_bits", layer.a_bits)):
        if not (1 < b <= 8 or b >= FLOAT_BITS):
            raise LatencyTableError(f"cannot build layer {layer.name!r} key {layer.key()}: {name}={b} has no int8 QDQ "
                                    f"or float form; use 2..8 bits or >= {FLOAT_BITS} (float)")


def layer_onnx(layer: LayerSpec, bn_params_as_inputs: bool = False, seed: int = 0) -> "onnx.ModelProto":
    """A one-layer ONNX model of ``layer`` in the form qnas' QCDQ export gives it (see module doc)."""
    from onnx import TensorProto, helper, numpy_helper

    _check_bits(layer)
    rng = np.random.default_rng(seed)
    nodes: list = []
    inits: list = []
    extra_inputs: list = []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def act_qdq(x: str, bits: int, tag: str) -> str:
        if bits >= FLOAT_BITS:
            return x
        s = const(f"{tag}_scale", np.array(4.0 / 2 ** (bits - 1), dtype=np.float32))
        z = const(f"{tag}_zp", np.array(0, dtype=np.int8))
        q = f"{tag}_q"
        nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [q]))
        if bits < 8:
            lo = const(f"{tag}_min", np.array(-(2 ** (bits - 1)), dtype=np.int8))
            hi = const(f"{tag}_max", np.array(2 ** (bits - 1) - 1, dtype=np.int8))
            nodes.append(helper.make_node("Clip", [q, lo, hi], [f"{tag}_clip"]))
            q = f"{tag}_clip"
        nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [f"{tag}_dq"]))
        return f"{tag}_dq"

    def weight(shape: tuple[int, ...], bits: int) -> str:
        cout = shape[0]
        if bits >= FLOAT_BITS:
            return const("w", (rng.standard_normal(shape) * 0.1).astype(np.float32))
        m = 2 ** (bits - 1) - 1
        w = const("w_int", rng.integers(-m, m + 1, size=shape, dtype=np.int8))
        lo = const("w_min", np.array(-m, dtype=np.int8))
        hi = const("w_max", np.array(m, dtype=np.int8))
        nodes.append(helper.make_node("Clip", [w, lo, hi], ["w_clip"]))
        s = const("w_scale", (rng.random(cout) * 0.01 + 0.001).astype(np.float32))
        z = const("w_zp", np.zeros(cout, dtype=np.int8))
        nodes.append(helper.make_node("DequantizeLinear", ["w_clip", s, z], ["w_dq"], axis=0))
        return "w_dq"

    l = layer
    inputs = []
    if l.op in ("conv", "dwconv", "pwconv"):
        inputs.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, l.cin, l.hw_in, l.hw_in]))
        x = act_qdq("input", l.a_bits, "in")
        w = weight((l.cout, l.cin // l.groups, l.k, l.k), l.w_bits)
        p = l.k // 2
        nodes.append(helper.make_node("Conv", [x, w], ["conv"], dilations=[1, 1], group=l.groups,
                                      kernel_shape=[l.k, l.k], pads=[p, p, p, p], strides=[l.stride, l.stride]))
        bn = []
        for name, arr in (("bn_weight", 1 + 0.1 * rng.standard_normal(l.cout)), ("bn_bias", 0.1 * rng.standard_normal(l.cout)),
                          ("bn_mean", 0.1 * rng.standard_normal(l.cout)), ("bn_var", 1 + rng.random(l.cout))):
            bn.append(const(name, arr.astype(np.float32)))
            if bn_params_as_inputs:
                extra_inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [l.cout]))
        nodes.append(helper.make_node("BatchNormalization", ["conv"] + bn, ["bn"], epsilon=1e-5, momentum=0.9))
        out = "bn"
        ho = (l.hw_in + 2 * p - l.k) // l.stride + 1
        out_shape = [1, l.cout, ho, ho]
        if _relu_after(l):
            nodes.append(helper.make_node("Relu", ["bn"], ["relu"]))
            out = "relu"
    elif l.op == "fc":
        inputs.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, l.cin]))
        x = act_qdq("input", l.a_bits, "in")
        w = weight((l.cout, l.cin), l.w_bits)
        b = const("bias", (0.01 * rng.standard_normal(l.cout)).astype(np.float32))
        nodes.append(helper.make_node("Gemm", [x, w, b], ["gemm"], alpha=1.0, beta=1.0, transB=1))
        out, out_shape = "gemm", [1, l.cout]
    elif l.op == "add":
        for n in ("input", "residual"):
            inputs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, l.cin, l.hw_in, l.hw_in]))
        nodes.append(helper.make_node("Add", ["residual", "input"], ["add"]))
        out, out_shape = "add", [1, l.cin, l.hw_in, l.hw_in]
    elif l.op == "pool":
        inputs.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, l.cin, l.hw_in, l.hw_in]))
        nodes.append(helper.make_node("GlobalAveragePool", ["input"], ["gap"]))
        nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], axis=1))
        out, out_shape = "flat", [1, l.cin]
    elif l.op == "mul":  # a squeeze-excite gate [1, C, 1, 1] times its feature map
        inputs.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, l.cin, l.hw_in, l.hw_in]))
        inputs.append(helper.make_tensor_value_info("gate", TensorProto.FLOAT, [1, l.cin, 1, 1]))
        nodes.append(helper.make_node("Mul", ["input", "gate"], ["mul"]))
        out, out_shape = "mul", [1, l.cin, l.hw_in, l.hw_in]
    else:
        raise LatencyTableError(f"cannot build layer {l.name!r}: unknown op {l.op!r}; ops are conv, dwconv, pwconv, fc, add, pool, mul")
    graph = helper.make_graph(nodes, f"qnas_layer_{l.op}", inputs + extra_inputs,
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)], initializer=inits)
    model = helper.make_model(graph, producer_name="qnas.latency.layer_measure",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def _session(model: "onnx.ModelProto", threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _identity_onnx(shape: tuple[int, ...]) -> "onnx.ModelProto":
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, list(shape))
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "identity", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 7
    return model


def _median_run_ms(sess: Any, feeds: dict, warmup: int, repeats: int) -> float:
    run = sess.run
    for _ in range(warmup):
        run(None, feeds)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(None, feeds)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def run_overhead_ms(shape: tuple[int, ...], threads: int = 1, warmup: int = 5, repeats: int = 20) -> float:
    """What one ``InferenceSession.run`` costs around the op itself (binding the input, fetching the
    output), timed on an Identity graph of that input shape."""
    sess = _session(_identity_onnx(shape), threads)
    feeds = {"input": np.zeros(shape, np.float32)}
    return _median_run_ms(sess, feeds, warmup, repeats)


def time_layer(layer: LayerSpec, threads: int = 1, warmup: int = 5, repeats: int = 20,
               bn_params_as_inputs: bool = False) -> float:
    """Median batch-1 onnxruntime latency (ms) of one layer's model (including the per-run cost;
    :func:`measure_layers` subtracts that)."""
    try:
        sess = _session(layer_onnx(layer, bn_params_as_inputs), threads)
    except LatencyTableError:
        raise
    except Exception as e:
        raise LatencyTableError(f"onnxruntime cannot run layer {layer.name!r} key {layer.key()} "
                                f"({str(e).splitlines()[0][:160]}); report this with the key") from None
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
             for i in sess.get_inputs() if i.name in ("input", "residual", "gate")}
    return _median_run_ms(sess, feeds, warmup, repeats)


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where available)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def measure_layers(layers: Iterable[LayerSpec], threads: int = 1, warmup: int = 5, repeats: int = 20,
                   progress: bool = True, target: str | None = None, notes: str = "",
                   bn_params_as_inputs: bool = False, subtract_run_overhead: bool = True,
                   passes: int = 1, *, device: str | None = None) -> "LatencyTable":
    """Time each distinct layer key of ``layers`` in onnxruntime on this machine's CPU; returns a
    :class:`LatencyTable` whose meta names ``target`` as the latency target it was measured on (default:
    this CPU's model name; ``device`` is the deprecated name of ``target``).

    Add/pool layers are timed as given: pass them with the bits the table
    should carry (``space_layer_keys`` already does). A one-layer graph pays
    a whole ``run()`` (input binding, output fetch) that a layer inside a
    network does not; with ``subtract_run_overhead`` that cost, timed on an
    Identity graph of the layer's input shape, is subtracted (floor 1 µs),
    so that a table sum approaches the whole model's latency. With ``passes`` > 1 the
    whole sweep is repeated and each key keeps its fastest median: on a shared
    machine interference only adds time, and comes in bursts longer than one layer."""
    import onnxruntime as ort
    from tqdm import tqdm

    from qnas.latency.table import LatencyTable, default_meta

    target = target_or_device("measure_layers", target, device)
    if threads < 1 or warmup < 0 or repeats < 1 or passes < 1:
        raise LatencyTableError(f"threads={threads}, warmup={warmup}, repeats={repeats}: need threads >= 1, "
                                "warmup >= 0 and repeats >= 1 (and passes >= 1)")
    unique: dict[tuple, LayerSpec] = {}
    for l in layers:
        unique.setdefault(l.key(), l)
    entries: dict[tuple, float] = {}
    overheads: dict[tuple, float] = {}
    sweep = [item for _ in range(passes) for item in unique.items()]
    for key, layer in tqdm(sweep, total=len(sweep), desc="measuring layers", unit="layer",
                           disable=not progress, leave=False):
        ms = time_layer(layer, threads, warmup, repeats, bn_params_as_inputs)
        if subtract_run_overhead:
            shape = (1, layer.cin, layer.hw_in, layer.hw_in) if layer.op != "fc" else (1, layer.cin)
            if shape not in overheads:
                overheads[shape] = run_overhead_ms(shape, threads, warmup, repeats)
            ms = max(ms - overheads[shape], 1e-3)
        entries[key] = min(ms, entries.get(key, math.inf))
    meta = default_meta(
        target=target or cpu_name(), runtime=f"onnxruntime {ort.__version__} CPUExecutionProvider", threads=threads,
        notes=(f"batch 1, fastest of {passes} pass(es) of a median of {repeats} runs after {warmup} warm-up, per-layer QCDQ graphs (opset {OPSET})"
               + (", BN params as inputs" if bn_params_as_inputs else "")
               + (", per-run overhead subtracted" if subtract_run_overhead else "") + (f"; {notes}" if notes else "")))
    return LatencyTable(entries, meta=meta)


def measure_space_table(space: "SearchSpace", archs: Iterable["Arch"] | None = None, **kwargs: Any) -> "LatencyTable":
    """``measure_layers(space_layer_keys(space, archs), **kwargs)``: a table covering ``archs``
    (default: every arch of the space)."""
    from qnas.latency.table import space_layer_keys

    return measure_layers(space_layer_keys(space, archs), **kwargs)


__all__ = ["layer_onnx", "measure_layers", "measure_space_table", "time_layer"]
