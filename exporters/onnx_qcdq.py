"""ONNX export in Brevitas' QCDQ form (QuantizeLinear -> Clip -> DequantizeLinear),
run and checked with onnxruntime."""
from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from qnas.exporters.base import Exporter, ParityReport, register
from qnas.exporters.parity import model_reference, torch_logits  # torch_logits: imported from here before
from qnas.quant.checkpoint import atomic_write
from qnas.quant.errors import ExportError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def ort_session(path: str | Path | bytes, threads: int = 1, exact: bool = False) -> Any:
    """An onnxruntime CPU session. ``exact``: no graph optimizations, so the Q/DQ graph runs as written
    (float math between quantize/dequantize pairs, like the PyTorch model); by default onnxruntime fuses
    Q/DQ patterns into integer kernels whose fixed-point requantization can round differently."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if exact:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(path if isinstance(path, bytes) else str(path), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:
        where = "the graph" if isinstance(path, bytes) else path
        raise ExportError(f"onnxruntime cannot load {where} ({str(e).splitlines()[0][:160]}); re-export the model") from None


def ort_activation_codes(path: str | Path) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """``images -> codes``: the integer codes of every activation QuantizeLinear of the file (after its
    Clip, in QCDQ form), in graph order, from the exact graph with those tensors added as outputs."""
    import onnx

    m = onnx.load(str(path))
    initializers = {i.name for i in m.graph.initializer}
    consumers: dict[str, list[Any]] = {}
    for n in m.graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    names = []
    for n in m.graph.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in initializers:  # weights are stored, not quantized here
            continue
        after = consumers.get(n.output[0], [])
        names.append(after[0].output[0] if len(after) == 1 and after[0].op_type == "Clip" else n.output[0])
    first = len(m.graph.output)
    m.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    session = ort_session(m.SerializeToString(), exact=True)

    def codes(images: torch.Tensor) -> list[torch.Tensor]:
        name = session.get_inputs()[0].name
        outs = session.run(None, {name: images.numpy().astype(np.float32)})[first:]
        return [torch.from_numpy(o.astype(np.float32)) for o in outs]
    return codes


def run_ort(session: Any, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: images[i:i + batch_size].numpy().astype(np.float32)})[0]
            for i in range(0, len(images), batch_size)]
    return torch.from_numpy(np.concatenate(outs))


@torch.no_grad()
def verify_in_ort(backend: str, path: str | Path, model: nn.Module, images: torch.Tensor,
                  labels: torch.Tensor) -> ParityReport:
    """Run an exported ONNX file in onnxruntime and compare it with the PyTorch model.

    Parity is checked on the graph as written (``exact``: what the file specifies, the same on every
    CPU); the agreement of onnxruntime's default, integer-fused execution is added as a note."""
    ref = model_reference(model, images)
    report = ref.compare(backend, run_ort(ort_session(path, exact=True), images), labels, ort_activation_codes(path))
    fused = ref.compare(backend, run_ort(ort_session(path), images), labels)
    steps = (f", logits within one step {100 * fused.within_one_step:.2f} % (max {fused.max_step_diff:.0f} steps)"
             if fused.within_one_step is not None else "")
    report.notes.append(f"onnxruntime's default (integer-fused) execution on this CPU: {100 * fused.agreement:.2f} % "
                        f"identical predictions, max |dlogit| {fused.max_abs_logit_diff:.3g}{steps}")
    return report


def measure_latency_ms(path: str | Path, input_shape: tuple[int, ...], threads: int = 1,
                       warmup: int = 10, repeats: int = 50) -> float:
    """Median onnxruntime latency (ms) of one inference at ``input_shape``."""
    session = ort_session(path, threads)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
    for _ in range(warmup):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


_CACHE_ATTRS = ("_cached_act", "_cached_bias", "_cached_weight")


def _export_caches(model: nn.Module) -> set[tuple[int, str]]:
    """The Brevitas quantizer caches already filled before an export."""
    return {(id(m), a) for m in model.modules() for a in _CACHE_ATTRS if getattr(m, a, None) is not None}


def _drop_export_caches(model: nn.Module, keep: set[tuple[int, str]]) -> None:
    """Empty the caches Brevitas' export filled: a quantizer with a cached output answers
    ``scale()`` from that cache, so a later change of the model would go unseen."""
    for m in model.modules():
        for a in _CACHE_ATTRS:
            if getattr(m, a, None) is not None and (id(m), a) not in keep:
                setattr(m, a, None)


@register("onnx")
class OnnxQcdqExporter(Exporter):
    """Brevitas ``export_onnx_qcdq``: integer weight codes with their scales, QDQ activations."""

    suffix = ".onnx"

    #: Brevitas exports through torch's TorchScript-based ONNX exporter, which writes opsets 13 to 20
    OPSETS = range(13, 21)

    def __init__(self, opset: int = 13):
        if isinstance(opset, bool) or not isinstance(opset, int) or opset not in self.OPSETS:
            raise ExportError(f"ONNX opset must be an integer from {self.OPSETS[0]} to {self.OPSETS[-1]} "
                              f"(Brevitas' QCDQ export), got {opset!r}")
        self.opset = opset

    def export_with_report(self, model: nn.Module, example_input: torch.Tensor, out: str | Path,
                           overwrite: bool = False) -> tuple[Path, None]:
        """Write the QCDQ file; there is no per-layer report (Brevitas writes every quantizer as is)."""
        return self._write(model, example_input, out, overwrite), None

    def _write(self, model: nn.Module, example_input: torch.Tensor, out: str | Path, overwrite: bool) -> Path:
        from brevitas.export import export_onnx_qcdq

        was_training = model.training
        model.eval()

        def write(tmp: Path) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_onnx_qcdq(model, args=example_input[:1], export_path=str(tmp), opset_version=self.opset,
                                 dynamo=False, keep_initializers_as_inputs=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                 dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        cached_before = _export_caches(model)
        try:
            return atomic_write(out, write, overwrite=overwrite)
        except ExportError:
            raise
        except Exception as e:
            if isinstance(e, ValueError) and type(e).__name__ != "ValueError":
                raise
            raise ExportError(f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0][:160]})") from None
        finally:
            _drop_export_caches(model, cached_before)
            model.train(was_training)

    def verify(self, path: str | Path, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> ParityReport:
        return verify_in_ort(self.name, path, model, images, labels)

    def measure_latency_ms(self, path: str | Path, input_shape: tuple[int, ...]) -> float | None:
        return measure_latency_ms(path, input_shape)
