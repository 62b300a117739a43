"""What an exported file is compared against: the PyTorch model's logits, counted in
quantization steps, and which differences a rounding tie explains.

A quantized network is a step function: a value that lands within float rounding error of a
rounding boundary (``k + 0.5`` codes) of some activation quantizer rounds either way depending on
the order a library sums a convolution or the formula it uses for a BatchNorm. At 2-4 bits one
code is a large part of the range, so such a flip can move the logits by tens of output steps
although both evaluations are faithful: PyTorch itself, on a CIFAR-like 3x32x32 mixed-precision
model, moves logits by up to 26 steps between batch 1 and batch 200, and differs from its own
float64 evaluation by more than one step on 0.4-1.1 % of logits.

So parity counts logits within one step of the model's (not just top-1 agreement), and, where the
runtime can report its intermediate codes (onnxruntime, LiteRT), traces each image whose logits differ by
more than a step: quantizer by quantizer in execution order, to the first one whose codes differ.
(LiteRT: the int8 tensors matched to the quantizers by scale and size in op order.) Its inputs
were then identical on both sides, so if each differing code is off by exactly one and
PyTorch's value lay within :data:`TIE_CODES` of a rounding boundary, float arithmetic explains the
image; anything else (a code two apart, a value far from a boundary) is the file's fault.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from qnas.exporters.base import ParityReport, compare_logits

TIE_CODES = 2.0 ** -8
"""how close to a rounding boundary, in codes, a value must lie for float rounding to flip it: float32
sums of a layer are off by about 1e-6 of their magnitude (<= 3e-4 codes at 8 bits); 4e-3 leaves a margin
while a random value lies that close only 0.8 % of the time"""
_ACT_INT_QUANT = "act_quant.fused_activation_quant_proxy.tensor_quant.int_quant"

MAX_TRACED_IMAGES = 64
"""images more than a step off that are traced at most: ties are rare (1-2 per few hundred images on the
models of bench/export_parity.py); more than this is no rounding noise, and tracing them all would hold
every activation of every image in memory"""

RuntimeCodes = Callable[[torch.Tensor], list[torch.Tensor]]
"""images -> the integer codes of every activation quantizer, in execution order (batch first)"""


def torch_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's logits in eval mode (its train/eval mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    finally:
        model.train(was_training)


def logit_step(model: nn.Module) -> float | None:
    """The quantization step of the model's logits (its 8-bit ``logit_quant``), or None when the
    model's output is not quantized."""
    from qnas.quant.layer_view import read_act_quant

    quant = getattr(model, "logit_quant", None)
    act = read_act_quant(quant) if isinstance(quant, nn.Module) else None
    return act.scale_value if act is not None and act.per_tensor else None


@dataclass
class QuantizerInputs:
    """What one activation quantizer of the model saw: its name, the value in codes before rounding
    (``x / scale + zero_point``) and the integer codes it produced."""

    name: str
    codes_real: torch.Tensor
    codes: torch.Tensor
    scale: float = 0.0
    """the per-tensor scale (0.0 when per-channel)"""


def quantizer_inputs(model: nn.Module, images: torch.Tensor) -> list[QuantizerInputs]:
    """Run ``model`` on ``images`` and record every activation quantizer's input, in execution order."""
    names = {m: n[: -len(_ACT_INT_QUANT) - 1] for n, m in model.named_modules() if n.endswith(_ACT_INT_QUANT)}
    seen: list[QuantizerInputs] = []

    def hook(module: nn.Module, args: tuple) -> None:
        scale, zero_point, bit_width, x = args
        real = x.detach() / scale.detach() + zero_point.detach()
        codes = torch.clamp(torch.round(real), float(module.min_int(bit_width)), float(module.max_int(bit_width)))
        scale_value = float(scale.detach().reshape(-1)[0]) if scale.numel() == 1 else 0.0
        seen.append(QuantizerInputs(names[module], real, codes, scale_value))

    handles = [m.register_forward_pre_hook(hook) for m in names]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(images)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


def rounding_tie(ref: list[QuantizerInputs], got: list[torch.Tensor], i: int) -> str | None:
    """Where image ``i`` first differs between the model (``ref``) and the runtime (``got``), if a
    rounding tie explains it: the quantizer's name; None when nothing differs or the difference is
    not a tie (a code two apart, or a value away from a rounding boundary)."""
    for q, codes in zip(ref, got):
        diff = (q.codes[i] - codes[i].to(q.codes.dtype)).abs()
        if not bool((diff > 0).any()):
            continue
        if bool((diff > 1).any()):
            return None
        real = q.codes_real[i][diff > 0]
        distance = (real - torch.floor(real) - 0.5).abs()
        return q.name if bool((distance <= TIE_CODES).all()) else None
    return None


@dataclass
class ModelReference:
    """The model and its logits on the verification images."""

    model: nn.Module
    images: torch.Tensor
    logits: torch.Tensor
    step: float | None

    def compare(self, backend: str, got: torch.Tensor, labels: torch.Tensor,
                runtime_codes: RuntimeCodes | None = None) -> ParityReport:
        """The parity of an exported file's logits ``got`` with the model's; with ``runtime_codes``
        (the file's activation codes on given images) the images more than a step off are traced."""
        report = compare_logits(backend, self.logits, got, labels, step=self.step)
        if self.step is None or runtime_codes is None:
            return report
        off = ((self.logits - got.float()).abs() > 1.001 * self.step)
        bad = off.any(1).nonzero().flatten()
        if len(bad) == 0:
            report.tie_images = 0
            return report
        if len(bad) > MAX_TRACED_IMAGES:
            report.tie_images = 0
            report.notes.append(f"{len(bad)} images lie more than a step off: more than rounding ties explain "
                                f"(> {MAX_TRACED_IMAGES}), not traced")
            return report
        images = self.images[bad]
        ref, got_codes = quantizer_inputs(self.model, images), runtime_codes(images)
        if [q.codes.shape for q in ref] != [c.shape for c in got_codes]:
            report.notes.append(f"could not trace the {len(bad)} image(s) more than a step off: the file has "
                                f"{len(got_codes)} activation quantizers, the model {len(ref)}")
            return report
        where = Counter()
        tie_logits = 0
        for k, i in enumerate(bad.tolist()):
            name = rounding_tie(ref, got_codes, k)
            if name is not None:
                where[name] += 1
                tie_logits += int(off[i].sum())
        report.tie_images, report.tie_logits = sum(where.values()), tie_logits
        if where:
            report.notes.append(f"{report.tie_images} of {len(bad)} image(s) more than a step off start at a value on a "
                                f"rounding boundary that float rounding flips ("
                                + ", ".join(f"{n}: {c}" for n, c in where.most_common(3)) + ")")
        return report


def model_reference(model: nn.Module, images: torch.Tensor) -> ModelReference:
    """Evaluate ``model`` on ``images``: the logits every backend's file is compared with."""
    return ModelReference(model, images, torch_logits(model, images), logit_step(model))
