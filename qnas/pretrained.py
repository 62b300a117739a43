"""Start from pretrained float weights: a torchvision MobileNetV2 / MobileNetV3 ``state_dict``.

torchvision stores a MobileNet's layers in execution order (``features.0.0``
the stem conv, ``features.0.1`` its BatchNorm, ..., ``classifier.*`` the
linear layers), and qnas' :meth:`~qnas.quant.build.QuantNet.quant_layers`
lists its layers in the same order (stem, each block's expand / depthwise /
squeeze-excite / project convs, the feature-mix conv, the pre-classifier and
the classifier). :func:`torchvision_to_qnas` pairs the two lists in order and
checks every shape, so a file that is not the preset's reference network is
refused with the first layer that differs. Nothing is downloaded: pass a file
you have (``torch.save(torchvision.models.mobilenet_v3_large(weights=...).state_dict(), F)``).

    model = build_model(preset_space("mobilenetv3-large"), reference_arch("mobilenetv3-large"))
    load_torchvision_weights(model, "mobilenet_v3_large.pth", bn_eps=TORCHVISION_BN_EPS["mobilenetv3-large"])
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from qnas.errors import CheckpointError

__all__ = ["TORCHVISION_BN_EPS", "torchvision_to_qnas", "load_torchvision_weights", "read_state_dict"]

#: BatchNorm epsilon of torchvision's networks (MobileNetV3 uses 1e-3, MobileNetV2 torch's default)
TORCHVISION_BN_EPS: dict[str, float] = {"mobilenetv2": 1e-5, "mobilenetv3-large": 1e-3}
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


@dataclass
class _Layer:
    prefix: str          # module path of the conv / linear
    weight: torch.Tensor
    bias: torch.Tensor | None
    bn: str | None = None  # module path of the BatchNorm that follows it


def _layers_in_order(state: Mapping[str, torch.Tensor]) -> list[_Layer]:
    """The conv/linear layers of a float state dict in key order, each with its following BatchNorm."""
    out: list[_Layer] = []
    for key, t in state.items():
        if not key.endswith(".weight"):
            continue
        prefix = key[:-len(".weight")]
        if f"{prefix}.running_mean" in state:
            if not out or out[-1].bn is not None:
                raise CheckpointError(f"BatchNorm {prefix!r} follows no conv layer; this is not a MobileNet state dict")
            out[-1].bn = prefix
        elif t.dim() in (2, 4):
            out.append(_Layer(prefix, t, state.get(f"{prefix}.bias")))
        else:
            raise CheckpointError(f"weight {key!r} of shape {tuple(t.shape)} is neither a conv nor a linear layer")
    return out


def torchvision_to_qnas(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float tensors of ``state`` (torchvision layout) under ``model``'s own keys.

    ``model`` is a :class:`~qnas.quant.build.QuantNet`; the result feeds
    :func:`qnas.quant.ptq.load_float_weights`. Raises a one-line
    :class:`~qnas.errors.CheckpointError` naming the first layer whose kind or
    shape differs."""
    theirs = _layers_in_order(state)
    ours = model.quant_layers()
    if len(theirs) != len(ours):
        raise CheckpointError(f"the file has {len(theirs)} conv/linear layers, the model {len(ours)}; "
                              "pass the weights of this preset's reference network (same depths and blocks)")
    out: dict[str, torch.Tensor] = {}
    for t, q in zip(theirs, ours):
        w = q.module.weight
        if tuple(t.weight.shape) != tuple(w.shape):
            raise CheckpointError(f"layer {t.prefix!r} has shape {tuple(t.weight.shape)} but qnas layer {q.name!r} "
                                  f"needs {tuple(w.shape)}; pass the weights of this preset's reference network")
        if (t.bn is None) != (q.bn is None):
            raise CheckpointError(f"layer {t.prefix!r} {'lacks' if t.bn is None else 'has'} a BatchNorm but qnas "
                                  f"layer {q.name!r} {'has' if q.bn is not None else 'has none'}")
        out[f"{q.name}.weight"] = t.weight
        if q.bias is not None:
            if t.bias is None:
                raise CheckpointError(f"layer {t.prefix!r} has no bias but qnas layer {q.name!r} needs one")
            out[f"{q.name}.bias"] = t.bias
        if t.bn is not None:
            for name in _BN_TENSORS + ("num_batches_tracked",):
                if f"{t.bn}.{name}" in state:
                    out[f"{q.bn_name}.{name}"] = state[f"{t.bn}.{name}"]
    return out


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A float ``state_dict`` saved with ``torch.save`` (read with ``weights_only=True``: nothing is unpickled)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}; check the path") from None
    except Exception as e:  # torch raises several types for a file that is not a safe tensor dict
        raise CheckpointError(f"{path} is not a torch state dict ({type(e).__name__}); save one with "
                              "torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors; save torch.save(model.state_dict(), path)")
    return state


@torch.no_grad()
def load_torchvision_weights(model: nn.Module, weights: str | os.PathLike[str] | Mapping[str, torch.Tensor],
                             bn_eps: float | None = None) -> nn.Module:
    """Copy a torchvision MobileNet's float weights (a file or a state dict) into ``model``.

    Quantizer scales are left as they are (calibrate or train them next: PTQ or
    QAT). ``bn_eps``: the BatchNorm epsilon the file's network used
    (:data:`TORCHVISION_BN_EPS`); the running variances absorb the difference to
    the model's own epsilon, so the float model computes what that network does."""
    from qnas.quant.ptq import load_float_weights

    state = read_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else dict(weights)
    mapped = torchvision_to_qnas(model, state)
    own = model.state_dict()
    for k, v in own.items():  # keep the model's own counters where the file has none
        if k.endswith("num_batches_tracked") and k not in mapped:
            mapped[k] = v
    if bn_eps is not None:  # (x - m) / sqrt(v + eps_file) == (x - m) / sqrt(v' + eps_model): persists in model.pt
        for layer in model.quant_layers():
            if layer.bn is not None:
                key = f"{layer.bn_name}.running_var"
                mapped[key] = mapped[key] + (float(bn_eps) - layer.bn.eps)
    load_float_weights(model, mapped)  # refuses a model tensor the file does not cover
    return model
