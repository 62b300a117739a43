"""How much each quantizer clips: the share of values outside its representable range.

A quantizer with codes in ``[qmin, qmax]`` and scale ``s`` (zero point ``z``) maps ``x`` to
``clamp(round(x / s + z), qmin, qmax)``; a value is *clipped* when ``round(x / s + z)`` falls
outside that range -- for qnas' zero-point-0 quantizers when ``x / s > qmax + 0.5`` or
``x / s < qmin - 0.5``, i.e. beyond the largest (smallest) representable value by more than
half a step. :func:`clipping_report` counts that for

* every enabled **activation** quantizer (``QuantIdentity`` / ``QuantReLU`` /
  ``QuantNonLinearActLayer``), on the value the quantizer actually rounds: a forward hook
  on the quantizer core (``act_quant.fused_activation_quant_proxy.tensor_quant``) sees its
  input *after* the activation the layer applies first (the ReLU of a ``QuantReLU``, the
  hard-sigmoid of an SE gate, qnas' restored ReLU6) and the scale and bit width it uses;
* every enabled **weight** quantizer (per output channel), from the current float weights
  and the scales the quantizer computes for them.

The model runs in eval mode under ``torch.no_grad`` (so no quantizer statistic, BN
statistic or parameter changes) and is put back in its previous mode. Kinds come from
:meth:`QuantNet.quant_layers` / :meth:`QuantNet.stream_quants` (``input``, ``act``,
``residual``, ``pool``, ``logits``, ``se``, ``gate``; ``weight`` for weight layers); any
other Brevitas model works too, its activation quantizers then being of kind ``act``.

A supernet's subnets are extracted into the same :class:`~qnas.quant.build.QuantNet`, so
this one diagnostic serves stand-alone models, finished models and inherited subnets.

>>> report = clipping_report(model, val.loader(128, False), max_batches=4)
>>> print(report.format())
>>> report.logits.share <= 0.01
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from qnas.quant.errors import QnasError
from qnas.quant.torch_device import module_device, to_device

__all__ = ["ClipRow", "ClipReport", "clipping_report", "ACT_KINDS"]

#: the kinds of activation rows (everything but ``weight``)
ACT_KINDS = ("input", "act", "residual", "pool", "logits", "se", "gate")


@dataclass(frozen=True)
class ClipRow:
    """One quantizer's clipping over the data (an activation) or over its weights."""

    name: str
    """module path: the activation quantizer's (``s0.b1.act2``) or the weight layer's (``s0.b1.dw``)"""
    kind: str
    """input, act, residual, pool, logits, se, gate (activations) or weight"""
    bits: int
    share: float
    """clipped / count, in [0, 1]"""
    clipped: int
    count: int
    """values seen (activations: over all batches; weights: the layer's weights)"""
    threshold: float
    """the largest representable value, ``(qmax - zero_point) * scale`` (weights: the largest over
    the output channels)"""
    max_abs: float
    """the largest ``|x|`` seen (weights: the largest ``|w|``)"""
    calibrated: bool | None = None
    """activations: False when the scale never saw statistics nor a loaded value (Brevitas'
    placeholder scale 1/2^(b-1) of an unrun, uncalibrated model); None when unknown"""
    low: float | None = None
    """the smallest representable value, ``(qmin - zero_point) * scale`` (weights: the smallest
    over the channels)"""
    op: str | None = None
    """weight rows: the layer's op (conv, dwconv, pwconv, fc)"""
    worst_channel_share: float | None = None
    """weight rows: the largest clipped share of one output channel"""

    @property
    def is_weight(self) -> bool:
        return self.kind == "weight"

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


@dataclass
class ClipReport:
    """Per-quantizer clipping of one model over some batches (:func:`clipping_report`)."""

    rows: list[ClipRow]
    """activation quantizers in execution order, then weight layers in model order"""
    images: int = 0
    batches: int = 0
    disabled: list[str] = field(default_factory=list)
    """quantizers present but disabled (not counted)"""
    unused: list[str] = field(default_factory=list)
    """enabled activation quantizers the forward pass never reached (not counted)"""
    warnings: list[str] = field(default_factory=list)

    # ---- views --------------------------------------------------------------------------------
    @property
    def activations(self) -> list[ClipRow]:
        return [r for r in self.rows if not r.is_weight]

    @property
    def weights(self) -> list[ClipRow]:
        return [r for r in self.rows if r.is_weight]

    def row(self, name: str, kind: str | None = None) -> ClipRow:
        """The row of quantizer / layer ``name`` (``kind="weight"`` picks a weight row when an
        activation quantizer had the same name)."""
        for r in self.rows:
            if r.name == name and (kind is None or r.kind == kind):
                return r
        raise KeyError(name)

    @property
    def logits(self) -> ClipRow | None:
        """The logit quantizer's row (None when the model has none or it is disabled)."""
        return next((r for r in self.rows if r.kind == "logits"), None)

    @property
    def worst_activation(self) -> ClipRow | None:
        acts = self.activations
        return max(acts, key=lambda r: r.share) if acts else None

    @property
    def worst_weight(self) -> ClipRow | None:
        ws = self.weights
        return max(ws, key=lambda r: r.share) if ws else None

    @property
    def median_activation_share(self) -> float | None:
        acts = self.activations
        return float(statistics.median(r.share for r in acts)) if acts else None

    @property
    def median_weight_share(self) -> float | None:
        ws = self.weights
        return float(statistics.median(r.share for r in ws)) if ws else None

    def summary(self) -> dict[str, Any]:
        """logits, worst activation and weight rows (name, share) and the median shares."""
        def brief(r: ClipRow | None) -> dict[str, Any] | None:
            return None if r is None else {"name": r.name, "kind": r.kind, "bits": r.bits, "share": r.share,
                                           "threshold": _finite(r.threshold), "max_abs": _finite(r.max_abs)}

        return {"logits": brief(self.logits), "worst_activation": brief(self.worst_activation),
                "median_activation_share": self.median_activation_share,
                "worst_weight": brief(self.worst_weight), "median_weight_share": self.median_weight_share}

    # ---- output ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: rows, summary, counts, disabled / unused quantizers and warnings (non-finite
        numbers as null)."""
        return {"images": self.images, "batches": self.batches, "summary": self.summary(),
                "rows": [r.to_dict() for r in self.rows], "disabled": list(self.disabled),
                "unused": list(self.unused), "warnings": list(self.warnings)}

    def format(self) -> str:
        """A text table (activations, then weights) with a summary and any warnings."""
        lines = [f"clipping over {self.images} images ({self.batches} batches): share of values outside each "
                 f"quantizer's range"]
        width = max([len(r.name) for r in self.rows] + [9])
        head = f"{'quantizer':<{width}}  {'kind':<8} {'bits':>4} {'clipped':>9}  {'threshold':>10} {'max|x|':>10} " \
               f"{'values':>10}"
        for title, rows in (("activations", self.activations), ("weights", self.weights)):
            if not rows:
                continue
            lines += ["", f"{title}:", head]
            for r in rows:
                mark = "  (uncalibrated)" if r.calibrated is False else ""
                if r.worst_channel_share is not None and r.worst_channel_share > 0:
                    mark += f"  worst channel {_pct(r.worst_channel_share)}"
                kind = r.op if r.is_weight and r.op else r.kind
                lines.append(f"{r.name:<{width}}  {kind:<8} {r.bits:>4} {_pct(r.share):>9}  {r.threshold:>10.4g} "
                             f"{r.max_abs:>10.4g} {r.count:>10}{mark}")
        lines.append("")
        lg = self.logits
        if lg is not None:
            lines.append(f"logits: {_pct(lg.share)} clipped (threshold {lg.threshold:.4g}, max |x| {lg.max_abs:.4g})")
        wa = self.worst_activation
        if wa is not None:
            lines.append(f"worst activation quantizer: {wa.name} ({wa.kind}, {wa.bits} bits) {_pct(wa.share)}; "
                         f"median {_pct(self.median_activation_share)}")
        ww = self.worst_weight
        if ww is not None:
            lines.append(f"worst weight layer: {ww.name} ({ww.bits} bits) {_pct(ww.share)}; "
                         f"median {_pct(self.median_weight_share)}")
        if self.disabled:
            lines.append(f"disabled (not counted): {', '.join(self.disabled)}")
        if self.unused:
            lines.append(f"not reached by the forward pass (not counted): {', '.join(self.unused)}")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.2f} %"


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


# --------------------------------------------------------------------------------------------- #
# discovery
# --------------------------------------------------------------------------------------------- #
def _act_proxies(model: nn.Module) -> list[tuple[str, nn.Module, Any]]:
    """(module path, module, act proxy) of every Brevitas activation quantizer of ``model``."""
    from brevitas.proxy.runtime_quant import ActQuantProxyFromInjectorBase

    out = []
    for name, m in model.named_modules():
        proxy = getattr(m, "act_quant", None)
        if isinstance(proxy, ActQuantProxyFromInjectorBase):
            out.append((name, m, proxy))
    return out


def _weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer as QuantWBIOL

    return [(name, m) for name, m in model.named_modules() if isinstance(m, QuantWBIOL)]


def _kinds(model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """(activation quantizer path -> kind, weight layer path -> op) from a QuantNet's views."""
    acts: dict[str, str] = {}
    ops: dict[str, str] = {}
    if not hasattr(model, "quant_layers"):
        return acts, ops
    layers = model.quant_layers()
    for i, layer in enumerate(layers):
        ops[layer.name] = str(layer.spec.op)
        acts.setdefault(layer.input_quant.name, "input" if i == 0 else "act")
        acts.setdefault(layer.output_quant.name, layer.output_quant.kind or "act")
    if hasattr(model, "stream_quants"):
        for q in model.stream_quants():
            if q.kind:
                acts[q.name] = q.kind
    return acts, ops


def _tensor_quant(proxy: Any) -> nn.Module | None:
    """The quantizer core (Brevitas' ``RescalingIntQuant``) of an enabled activation proxy."""
    from brevitas.proxy.runtime_quant import _TensorQuantDisabledIdentity

    fused = getattr(proxy, "fused_activation_quant_proxy", None)
    tq = getattr(fused, "tensor_quant", None) if fused is not None else None
    if tq is None or isinstance(tq, _TensorQuantDisabledIdentity) or not hasattr(tq, "int_quant"):
        return None
    return tq


def _calibrated(tq: nn.Module) -> bool | None:
    """False when a runtime-statistics scale never saw data nor a loaded value."""
    from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling

    impl = getattr(tq, "scaling_impl", None)
    if isinstance(impl, ParameterFromRuntimeStatsScaling):
        return int(impl.counter) > 0
    return None


# --------------------------------------------------------------------------------------------- #
# counting
# --------------------------------------------------------------------------------------------- #
def _codes_out_of_range(int_quant: nn.Module, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                        bit_width: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """(mask of clipped values, qmin, qmax): ``round(x / scale + zero_point)`` outside the
    quantizer's integer range, rounded the way Brevitas' ``IntQuant`` rounds."""
    x = int_quant.input_view_impl(x)
    q = torch.round(x / scale + zero_point)
    lo, hi = float(int_quant.min_int(bit_width)), float(int_quant.max_int(bit_width))
    return (q > hi) | (q < lo), lo, hi


class _ActStats:
    __slots__ = ("name", "kind", "count", "clipped", "max_abs", "bits", "threshold", "low", "order")

    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind
        self.count = self.clipped = 0
        self.max_abs = 0.0
        self.bits = 0
        self.threshold = self.low = math.nan
        self.order: int | None = None


def _act_hook(stats: _ActStats, tq: nn.Module, order: list[int]):
    def hook(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0]
        x = x.value if hasattr(x, "value") else x
        if x.dim() == 0:  # Brevitas' zero sentinel (proxy.scale() runs the quantizer on it), not data
            return
        _, scale, zp, bw = output[:4]
        x, scale, zp = x.detach().float(), scale.detach().float(), zp.detach().float()
        mask, lo, hi = _codes_out_of_range(tq.int_quant, x, scale, zp, bw.detach())
        stats.count += x.numel()
        stats.clipped += int(mask.sum())
        if x.numel():
            stats.max_abs = max(stats.max_abs, float(x.abs().max()))
        stats.bits = int(round(float(bw)))
        stats.threshold = float(((hi - zp) * scale).max())
        stats.low = float(((lo - zp) * scale).min())
        if stats.order is None:
            stats.order = order[0]
            order[0] += 1

    return hook


@torch.no_grad()
def _weight_row(name: str, layer: nn.Module, op: str | None) -> ClipRow:
    tq = layer.weight_quant.tensor_quant
    w = layer.weight.detach()
    _, scale, zp, bw = tq(w)[:4]
    scale, zp = scale.detach().float(), zp.detach().float()
    mask, lo, hi = _codes_out_of_range(tq.int_quant, w.float(), scale, zp, bw)
    per_channel = mask.reshape(mask.shape[0], -1).float().mean(dim=1) if mask.dim() > 0 else mask.float()
    n = w.numel()
    clipped = int(mask.sum())
    return ClipRow(name=name, kind="weight", bits=int(round(float(bw))), share=clipped / n if n else 0.0,
                   clipped=clipped, count=n, threshold=float(((hi - zp) * scale).max()),
                   max_abs=float(w.abs().max()) if n else 0.0, low=float(((lo - zp) * scale).min()),
                   op=op, worst_channel_share=float(per_channel.max()) if per_channel.numel() else 0.0)


# --------------------------------------------------------------------------------------------- #
# batches
# --------------------------------------------------------------------------------------------- #
def _iter_inputs(batches: Any, batch_size: int) -> Iterator[torch.Tensor]:
    images = getattr(batches, "images", None)
    if isinstance(images, torch.Tensor):  # a CalibrationSet / ImageDataset
        batches = images
    if isinstance(batches, torch.Tensor):
        if batches.dim() == 0 or batches.shape[0] == 0:
            return
        for i in range(0, batches.shape[0], batch_size):
            yield batches[i:i + batch_size]
        return
    for b in batches:
        if isinstance(b, dict):
            b = b.get("images", b.get("x", b.get("input")))
        elif isinstance(b, (tuple, list)):
            b = b[0]
        if not isinstance(b, torch.Tensor):
            raise QnasError(f"a batch must be a tensor or an (images, labels) pair, got {type(b).__name__}")
        yield b


def _check_input(model: nn.Module, x: torch.Tensor) -> None:
    plan = getattr(model, "plan", None)
    c, r = getattr(plan, "in_channels", None), getattr(plan, "resolution", None)
    if x.dim() != 4:
        raise QnasError(f"batches must be 4-D (N, C, H, W) images, got shape {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise QnasError(f"batches must be float (normalized) images, got {x.dtype}")
    if c is not None and r is not None and tuple(x.shape[1:]) != (int(c), int(r), int(r)):
        raise QnasError(f"images are {'x'.join(map(str, x.shape[1:]))} but the model expects {c}x{r}x{r}; "
                        f"resize them (ImageDataset.at_resolution({r}))")


# --------------------------------------------------------------------------------------------- #
# the report
# --------------------------------------------------------------------------------------------- #
def clipping_report(model: nn.Module, batches: Any, max_batches: int | None = 10, *, batch_size: int = 128,
                    weights: bool = True) -> ClipReport:
    """Run ``model`` (eval mode, no grad) over ``batches`` and report, per quantizer, the share of
    values it clips.

    ``batches``: an iterable of image tensors or ``(images, labels, ...)`` pairs (a DataLoader), or
    a 4-D tensor / ``CalibrationSet`` / ``ImageDataset`` (split into ``batch_size`` chunks); at most
    ``max_batches`` are used (None: all). ``weights=False`` leaves out the weight rows.

    Raises :class:`QnasError` when the model has no enabled quantizer (e.g. it runs inside
    :func:`qnas.quant.ptq.float_mode`), when there is no batch, or for images of the wrong shape.
    An uncalibrated model (activation scales never set from data) is reported, with a warning."""
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise QnasError(f"max_batches must be a positive integer or None, got {max_batches!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise QnasError(f"batch_size must be a positive integer, got {batch_size!r}")
    kinds, ops = _kinds(model)
    proxies = _act_proxies(model)
    wlayers = _weight_layers(model)
    if not proxies and not wlayers:
        raise QnasError(f"{type(model).__name__} has no Brevitas quantizer; pass a quantized model (a QuantNet)")

    disabled: list[str] = []
    acts: list[tuple[_ActStats, nn.Module]] = []
    for name, module, proxy in proxies:
        tq = _tensor_quant(proxy)
        if not proxy.is_quant_enabled or tq is None:
            disabled.append(name)
            continue
        acts.append((_ActStats(name, kinds.get(name, "act")), tq))
    enabled_w = [(n, m) for n, m in wlayers if m.weight_quant.is_quant_enabled and m.weight is not None] \
        if weights else []
    if weights:
        disabled += [n for n, m in wlayers if not m.weight_quant.is_quant_enabled]
    if not acts and not enabled_w:
        raise QnasError("every quantizer of the model is disabled (is it inside qnas.quant.ptq.float_mode?); "
                        "a float model clips nothing -- run the diagnostic outside float_mode")

    order = [0]
    handles = [tq.register_forward_hook(_act_hook(st, tq, order)) for st, tq in acts]
    was_training = model.training
    device = module_device(model)
    used = images = 0
    try:
        model.eval()
        with torch.no_grad():
            for x in _iter_inputs(batches, batch_size):
                if max_batches is not None and used >= max_batches:
                    break
                _check_input(model, x)
                model(to_device(x, device))
                used += 1
                images += int(x.shape[0])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if used == 0 and acts:
        raise QnasError("no batches to run: pass a non-empty DataLoader, tensor or calibration set")

    ran = sorted((st for st, _ in acts if st.order is not None), key=lambda s: s.order)
    calib = {st.name: _calibrated(tq) for st, tq in acts}
    rows = [ClipRow(name=st.name, kind=st.kind, bits=st.bits, share=st.clipped / st.count if st.count else 0.0,
                    clipped=st.clipped, count=st.count, threshold=st.threshold, max_abs=st.max_abs,
                    calibrated=calib[st.name], low=st.low) for st in ran]
    unused = [st.name for st, _ in acts if st.order is None]
    was_w = [m.training for _, m in enabled_w]
    try:
        for _, m in enabled_w:
            m.eval()
        rows += [_weight_row(n, m, ops.get(n)) for n, m in enabled_w]
    finally:
        for (_, m), t in zip(enabled_w, was_w):
            m.train(t)

    warnings: list[str] = []
    uncal = [r.name for r in rows if r.calibrated is False]
    if uncal:
        warnings.append(f"{len(uncal)} activation quantizer(s) were never calibrated (placeholder scale; e.g. "
                        f"{uncal[0]}): calibrate (qnas.quant.ptq.ptq) or train the model before reading their shares")
    if any(n in disabled for n, _, _ in proxies) and acts:
        warnings.append(f"{len([n for n, _, _ in proxies if n in disabled])} activation quantizer(s) are disabled "
                        "and not counted")
    return ClipReport(rows=rows, images=images, batches=used, disabled=disabled, unused=unused, warnings=warnings)
