"""Zero-cost proxies: a training-free first pass over candidates (DESIGN.md §4).

Two proxies, both computed on the freshly initialised Brevitas model of an
arch (:func:`qnas.quant.build.build_model`), both "higher is better":

``naswot`` -- Mellor et al., "Neural Architecture Search without Training"
    (ICML 2021). Forward one mini-batch; every ReLU unit gives each image one
    bit (output > 0). ``K[i, j]`` counts the units on which images ``i`` and
    ``j`` agree (``N_units - Hamming distance``), summed over all ReLUs; the
    score is ``log|det K|``. It runs on the model *as quantized* -- weights at
    their ``w_bits`` and activations at their ``a_bits`` -- in training mode
    under ``no_grad`` (as the paper's networks: BN uses batch statistics, and
    Brevitas' activation quantizers take their scale from the batch, which
    they would otherwise not have before calibration). A ReLU output that an
    ``a_bits`` quantizer rounds to 0 counts as 0, so the score sees the bits.
    The ReLUs are the stem's ``nn.ReLU`` and every ``QuantReLU``.

``synflow`` -- Tanaka et al., "Pruning neural networks without any data by
    iteratively conserving synaptic flow" (NeurIPS 2020), as a NAS proxy
    (Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021).
    On a *copy* of the model: every parameter and buffer replaced by its
    absolute value, float64, an all-ones input, ``R = sum(output)``, and the
    score is ``sum |W * dR/dW|`` over conv and linear weights. Activation
    quantization is switched off (Brevitas ``quantization_status_manager``,
    ``disable_act_quant=True``): on all-positive weights and an all-ones input
    the activations grow layer after layer far past any ``a_bits`` range, so
    quantizing them would only clip. Weight quantization stays on (the weights
    multiplied are the ``w_bits`` ones; gradients pass the rounding by the
    straight-through estimator); BN runs in eval mode on its initial
    statistics (an identity up to eps). Returned as ``log(score)``, as the raw
    value spans many orders of magnitude.

Neither proxy trains anything; both are scores, not accuracies.
:class:`ZeroCostEvaluator` therefore puts the score in the record as
``score`` and ``proxy`` too (``val_acc`` carries the same number only so the
search loop and strategies, which maximise ``val_acc``, can use it).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from qnas.arch import Arch
from qnas.errors import ConfigError, QnasError
from qnas.space import SearchSpace


def _relu_modules(model: nn.Module) -> list[nn.Module]:
    import brevitas.nn as qnn

    quant = [m for m in model.modules() if isinstance(m, qnn.QuantReLU)]
    inner = {id(sub) for q in quant for sub in q.modules() if sub is not q}  # the float ReLU inside a QuantReLU
    return [m for m in model.modules() if isinstance(m, (nn.ReLU, qnn.QuantReLU)) and id(m) not in inner]


def _value(t: Any) -> torch.Tensor:
    return t.value if hasattr(t, "value") and not isinstance(t, torch.Tensor) else t


def naswot_score(model: nn.Module, images: torch.Tensor) -> float:
    """``log|det K|`` of the binary ReLU codes of ``images`` (a batch ``[N, C, H, W]``, N >= 2)."""
    if images.dim() != 4 or images.shape[0] < 2:
        raise QnasError(f"naswot needs a batch of at least 2 images [N, C, H, W], got shape {tuple(images.shape)}")
    n = images.shape[0]
    K = torch.zeros(n, n, dtype=torch.float64)

    def hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        c = (_value(out).detach().reshape(n, -1) > 0).to(K.device, torch.float64)  # K on the CPU (MPS has no float64)
        K.add_(c @ c.T + (1 - c) @ (1 - c).T)

    handles = [m.register_forward_hook(hook) for m in _relu_modules(model)]
    was_training = model.training
    try:
        model.train()
        with torch.no_grad():
            model(images)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    sign, logdet = torch.linalg.slogdet(K)
    return float(logdet) if float(sign) != 0 else float("-inf")


def synflow_score(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """``log sum |W * dR/dW|`` on an absolute-valued float64 copy of ``model`` (see module doc).

    ``input_shape`` is ``(C, H, W)``; ``model`` itself is left untouched."""
    from brevitas.graph.calibrate import quantization_status_manager

    net = copy.deepcopy(model)
    net.eval()
    with torch.no_grad():
        for v in net.state_dict().values():
            if torch.is_floating_point(v):
                v.abs_()
    net = net.double()
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with quantization_status_manager(net, disable_act_quant=True, is_training=False):
        net.zero_grad()
        out = _value(net(torch.ones((1, *input_shape), dtype=torch.float64)))
        out.sum().backward()
    total = sum(float((w.detach() * w.grad).abs().sum()) for w in weights if w.grad is not None)
    return math.log(total) if total > 0 else float("-inf")


PROXIES: dict[str, str] = {
    "naswot": "log|K| of binary ReLU codes (Mellor et al. 2021), on the quantized model",
    "synflow": "log synaptic flow (Tanaka et al. 2020), abs-valued float64 copy, activation quantization off",
}


def proxy_names() -> list[str]:
    return sorted(PROXIES)


class ZeroCostEvaluator:
    """Accuracy-source interface (``arch -> record fields``) that scores with a zero-cost proxy.

    ``images``: an :class:`~qnas.data.ImageDataset` or a ``[N, C, H, W]``
    float tensor (normalised like the training data); ``batch_size`` of them,
    drawn with ``seed``, are resized (bilinear, antialiased when shrinking,
    like ``ImageDataset.at_resolution``) to each arch's resolution. Models are
    initialised with ``torch.manual_seed(seed)`` (global RNG state restored).
    ``naswot`` runs its forward pass on ``torch_device``; ``synflow`` (one all-ones
    image through a float64 copy; MPS has no float64) always on the CPU.

    >>> ev = ZeroCostEvaluator(space, splits.train, proxy="naswot")
    >>> ev(arch)    # {"val_acc": 812.3, "score": 812.3, "proxy": "naswot", "acc_source": "zero-cost"}
    """

    def __init__(self, space: SearchSpace, images: Any, proxy: str = "naswot", batch_size: int = 32, seed: int = 0,
                 torch_device: str = "cpu"):
        from qnas.quant.torch_device import resolve_torch_device

        if proxy not in PROXIES:
            raise ConfigError(f"unknown zero-cost proxy {proxy!r}; choose one of {proxy_names()}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
            raise ConfigError(f"batch_size must be an integer >= 2, got {batch_size!r}")
        if hasattr(images, "subset") and hasattr(images, "labels"):
            # a data set: read only the images drawn below (the same ones; a streamed set is never loaded whole)
            images = images.subset(np.sort(np.random.default_rng(seed).permutation(len(images))[:batch_size]))
            seed_pick = np.arange(len(images))
        else:
            seed_pick = None
        x = images.images if hasattr(images, "images") else images
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ConfigError("ZeroCostEvaluator needs an ImageDataset or a [N, C, H, W] image tensor")
        if x.shape[1] != space.config.in_channels:
            raise ConfigError(f"the images have {x.shape[1]} channel(s), the space expects {space.config.in_channels}")
        if proxy == "naswot" and len(x) < 2:
            raise ConfigError("naswot needs at least 2 images")
        idx = np.random.default_rng(seed).permutation(len(x))[:batch_size] if seed_pick is None else seed_pick
        self.space, self.proxy, self.seed = space, proxy, seed
        self.device = resolve_torch_device(torch_device)
        self.images = x[torch.as_tensor(np.sort(idx))].to(torch.float32)
        self._resized: dict[int, torch.Tensor] = {}

    def batch(self, resolution: int) -> torch.Tensor:
        if resolution not in self._resized:
            x = self.images
            h, w = x.shape[2:]
            if (h, w) != (resolution, resolution):
                x = nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear",
                                              align_corners=False, antialias=resolution < h or resolution < w)
            self._resized[resolution] = x.contiguous()
        return self._resized[resolution]

    def score(self, arch: Arch) -> float:
        from qnas.quant.build import build_model

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = build_model(self.space, arch)
            x = self.batch(arch.resolution)
            if self.proxy == "naswot":
                return naswot_score(model.to(self.device), x.to(self.device))
            return synflow_score(model, tuple(x.shape[1:]))

    def __call__(self, arch: Arch) -> dict[str, Any]:
        s = self.score(arch)
        return {"val_acc": s, "score": s, "proxy": self.proxy, "acc_source": "zero-cost"}
