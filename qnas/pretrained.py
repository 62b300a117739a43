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
    load_torchvision_weights(model, "mobilenet_v3_large.pth")

* :func:`load_torchvision_weights` -- into a model of the matching arch (``qnas finish qat|ptq
  --pretrained PATH``, through :func:`load_pretrained`);
* :func:`load_torchvision_weights_into_supernet` -- into a :class:`~qnas.supernet.Supernet` whose space
  contains the published network (``qnas supernet train --pretrained PATH``, through
  :func:`train_pretrained_supernet_run`);
* :func:`torchvision_network` -- which published network a file holds (by its layer shapes).

The classifier: with ``classifier="auto"`` (the default) a file whose last linear layer has another
number of classes than the model (1000 ImageNet classes, a 10-class data set) leaves the model's own
freshly initialised classifier in place and loads everything else; ``"load"`` refuses that,
``"new"`` never loads the classifier.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch import nn

from qnas.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from qnas.arch import Arch
    from qnas.space import SearchSpace
    from qnas.supernet import Supernet

__all__ = ["TORCHVISION_BN_EPS", "CLASSIFIER_MODES", "torchvision_to_qnas", "load_torchvision_weights",
           "read_state_dict", "torchvision_network", "reference_in_space", "load_pretrained", "PretrainedLoad",
           "load_torchvision_weights_into_supernet", "train_pretrained_supernet_run"]

#: BatchNorm epsilon of torchvision's networks (MobileNetV3 uses 1e-3, MobileNetV2 torch's default)
TORCHVISION_BN_EPS: dict[str, float] = {"mobilenetv2": 1e-5, "mobilenetv3-large": 1e-3}
#: the published network each key of :data:`TORCHVISION_BN_EPS` stands for
_TITLES: dict[str, str] = {"mobilenetv2": "MobileNetV2-1.0", "mobilenetv3-large": "MobileNetV3-Large"}
#: what to do with the file's classifier (its last linear layer); see the module docstring
CLASSIFIER_MODES: tuple[str, ...] = ("auto", "load", "new")
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


def _new_classifier(classifier: str, theirs: _Layer, ours: Any) -> bool:
    """Whether the file's last layer ``theirs`` is left out (the model keeps its own classifier ``ours``)."""
    if classifier not in CLASSIFIER_MODES:
        raise ConfigError(f"unknown classifier mode {classifier!r}; choose one of {list(CLASSIFIER_MODES)}")
    w = ours.module.weight
    if classifier == "load" or theirs.weight.dim() != 2 or w.dim() != 2 or theirs.weight.shape[1] != w.shape[1]:
        return False  # shapes are checked (and refused) as for any other layer
    return classifier == "new" or theirs.weight.shape[0] != w.shape[0]


def torchvision_to_qnas(model: nn.Module, state: Mapping[str, torch.Tensor],
                        classifier: str = "load") -> dict[str, torch.Tensor]:
    """The float tensors of ``state`` (torchvision layout) under ``model``'s own keys.

    ``model`` is a :class:`~qnas.quant.build.QuantNet`; the result feeds
    :func:`qnas.quant.ptq.load_float_weights`. Raises a one-line
    :class:`~qnas.errors.CheckpointError` naming the first layer whose kind or
    shape differs. ``classifier`` (``auto``/``load``/``new``, see the module docstring): when the
    file's classifier is left out, the result has no entries for the model's classifier."""
    theirs = _layers_in_order(state)
    ours = model.quant_layers()
    if len(theirs) != len(ours):
        raise CheckpointError(f"the file has {len(theirs)} conv/linear layers, the model {len(ours)}; a torchvision "
                              "file fits only its preset's reference arch (qnas.presets.reference_arch: same "
                              "depths and blocks)")
    skip_last = _new_classifier(classifier, theirs[-1], ours[-1])
    out: dict[str, torch.Tensor] = {}
    for i, (t, q) in enumerate(zip(theirs, ours)):
        if skip_last and i == len(ours) - 1:
            break
        w = q.module.weight
        if tuple(t.weight.shape) != tuple(w.shape):
            hint = (" (another number of classes: pass classifier='auto' to keep the model's own classifier)"
                    if i == len(ours) - 1 and t.weight.shape[1:] == w.shape[1:] else "")
            raise CheckpointError(f"layer {t.prefix!r} has shape {tuple(t.weight.shape)} but qnas layer {q.name!r} "
                                  f"needs {tuple(w.shape)}; a torchvision file fits only its preset's reference "
                                  f"arch (qnas.presets.reference_arch){hint}")
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
    if Path(path).is_dir():
        raise CheckpointError(f"{path} is a directory; pass the weights file (torch.save(model.state_dict(), path))")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}; check the path") from None
    except Exception as e:  # torch raises several types for a file that is not a safe tensor dict
        raise CheckpointError(f"{path} is not a torch state dict ({type(e).__name__}); save one with "
                              "torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors; "
                              "save torch.save(model.state_dict(), path)")
    return state


def _state(weights: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return read_state_dict(weights) if isinstance(weights, (str, os.PathLike)) else dict(weights)


# ---- which network a file holds -------------------------------------------------------------
def _weight_shape(spec: Any) -> tuple[int, ...]:
    if spec.op == "fc":
        return (spec.cout, spec.cin)
    return (spec.cout, spec.cin // spec.groups, spec.k, spec.k)


@functools.lru_cache(maxsize=None)
def _reference_shapes(network: str) -> tuple[tuple[int, ...], ...]:
    from qnas.presets import preset_space, reference_arch

    return tuple(_weight_shape(s) for s in preset_space(network).plan(reference_arch(network)).quantized_layers())


def torchvision_network(weights: str | os.PathLike[str] | Mapping[str, torch.Tensor]) -> str | None:
    """``"mobilenetv2"`` / ``"mobilenetv3-large"`` when the conv/linear layers of ``weights`` (a file or a
    state dict) have that published network's shapes in order (any number of classes), else None."""
    try:
        shapes = [tuple(l.weight.shape) for l in _layers_in_order(_state(weights))]
    except CheckpointError:
        if isinstance(weights, (str, os.PathLike)):
            raise  # a file that cannot be read says so
        return None
    for network in TORCHVISION_BN_EPS:
        ref = _reference_shapes(network)
        if len(ref) == len(shapes) and list(ref[:-1]) == shapes[:-1] and ref[-1][1:] == shapes[-1][1:]:
            return network
    return None


def reference_in_space(space: "SearchSpace", network: str) -> "Arch":
    """The published network ``network`` (a key of :data:`TORCHVISION_BN_EPS`) as an arch of ``space``:
    its blocks (kernels, expand ratios, depths) at width 1.0, the space's largest resolution and
    highest bits. A one-line :class:`~qnas.errors.CheckpointError` when ``space`` does not contain it."""
    from qnas.arch import Arch, Block
    from qnas.errors import QnasError
    from qnas.presets import reference_arch

    c = space.config
    wb, ab = max(c.w_bits), max(c.a_bits)
    sh = (max(c.stem_head_w_bits), max(c.stem_head_a_bits))
    stages = tuple(tuple(Block(b.kernel, b.expand, (wb,) * 3, (ab,) * 3) for b in st)
                   for st in reference_arch(network).stages)
    try:
        # an op without expand conv decodes its expand-conv bits as the first choice (as reference_arch does)
        arch = space.decode(space.encode(Arch(max(c.resolutions), 1.0, stages, sh, sh)))
        plan = space.plan(arch)
    except QnasError as e:
        raise CheckpointError(f"the search space does not contain {_TITLES[network]}, the network of the weights "
                              f"file ({e}); use --space {network}, or a space with its stages and choices") from None
    ours = [_weight_shape(s) for s in plan.quantized_layers()]
    ref = _reference_shapes(network)
    for i, (a, b) in enumerate(zip(ours, ref)):
        if a != b and not (i == len(ref) - 1 and a[1:] == b[1:]):  # the class count may differ
            raise CheckpointError(f"the search space's {_TITLES[network]} has layer {plan.quantized_layers()[i].name} "
                                  f"of shape {a}, the published network {b}; use --space {network}")
    if len(ours) != len(ref):
        raise CheckpointError(f"the search space's {_TITLES[network]} has {len(ours)} conv/linear layers, the "
                              f"published network {len(ref)}; use --space {network}")
    return arch


# ---- into a model -------------------------------------------------------------------------
@torch.no_grad()
def _load_into_model(model: nn.Module, state: Mapping[str, torch.Tensor], bn_eps: float | None,
                     classifier: str) -> bool:
    """Load ``state`` (torchvision layout) into ``model``; whether the file's classifier was loaded."""
    from qnas.quant.ptq import load_float_weights

    if bn_eps is None:
        network = torchvision_network(state)
        bn_eps = TORCHVISION_BN_EPS[network] if network is not None else None
    mapped = torchvision_to_qnas(model, state, classifier)
    own = model.state_dict()
    head = model.quant_layers()[-1].name
    loaded_head = f"{head}.weight" in mapped
    for k, v in own.items():  # keep the model's own counters (and classifier, when left out) where the file has none
        if k not in mapped and (k.endswith("num_batches_tracked") or k.startswith(f"{head}.")):
            mapped[k] = v
    if bn_eps is not None:  # (x - m) / sqrt(v + eps_file) == (x - m) / sqrt(v' + eps_model): persists in model.pt
        for layer in model.quant_layers():
            if layer.bn is not None:
                key = f"{layer.bn_name}.running_var"
                mapped[key] = mapped[key] + (float(bn_eps) - layer.bn.eps)
    load_float_weights(model, mapped)  # refuses a model tensor the file does not cover
    return loaded_head


def load_torchvision_weights(model: nn.Module, weights: str | os.PathLike[str] | Mapping[str, torch.Tensor],
                             bn_eps: float | None = None, classifier: str = "auto") -> nn.Module:
    """Copy a torchvision MobileNet's float weights (a file or a state dict) into ``model``.

    Quantizer scales are left as they are (calibrate or train them next: PTQ or
    QAT). ``bn_eps``: the BatchNorm epsilon the file's network used (default: that of the
    published network the file's shapes are, :data:`TORCHVISION_BN_EPS`; no correction for any
    other file); the running variances absorb the difference to the model's own epsilon, so the
    float model computes what that network does. ``classifier``: ``auto`` (default; a file with
    another class count leaves the model's classifier as initialised), ``load`` or ``new``."""
    _load_into_model(model, _state(weights), bn_eps, classifier)
    return model


@dataclass(frozen=True)
class PretrainedLoad:
    """What :func:`load_pretrained` loaded: the file, the published network its shapes are (None for
    any other file that lines up with the model) and whether the file's classifier was loaded."""

    path: str
    network: str | None
    classifier_loaded: bool
    num_classes: int

    def describe(self) -> str:
        what = _TITLES[self.network] if self.network is not None else "float"
        head = "" if self.classifier_loaded else f", new {self.num_classes}-class classifier"
        return f"{what} weights from {self.path}{head}"


def load_pretrained(model: nn.Module, path: str | os.PathLike[str], classifier: str = "auto") -> PretrainedLoad:
    """:func:`load_torchvision_weights` from the file ``path`` with the default BatchNorm epsilon (that
    of the published network the file is); what ``qnas finish --pretrained`` runs. Every error is one
    line; the result says what was loaded."""
    state = read_state_dict(path)
    loaded = _load_into_model(model, state, None, classifier)
    return PretrainedLoad(str(path), torchvision_network(state), loaded,
                          int(model.quant_layers()[-1].module.weight.shape[0]))


# ---- into a supernet -------------------------------------------------------------------------
@torch.no_grad()
def load_torchvision_weights_into_supernet(supernet: "Supernet",
                                           weights: str | os.PathLike[str] | Mapping[str, torch.Tensor],
                                           bn_eps: float | None = None, classifier: str = "auto") -> "Arch":
    """Load a torchvision MobileNetV2 / MobileNetV3-Large into ``supernet`` as the subnet that is the
    published network; returns that arch (:func:`reference_in_space`).

    The supernet's space must contain the published network (``mobilenetv2`` / ``mobilenetv3-large``
    presets, or a YAML with their stages; ``ofa-mbv3`` does not: it has no expand 2.3/2.5), else a
    one-line :class:`~qnas.errors.CheckpointError`. Each tensor goes where that subnet reads it: the
    leading channels of each layer (OFA's first-k slicing), a depthwise kernel into the centre of the
    largest kernel (the kernel-transform matrices are reset to identity), each BatchNorm into every
    one of its switchable copies (every expand ratio and bit width, float included). What the
    published network does not use is made neutral rather than left random: the columns of each
    layer's weights beyond the channels it reads are zero, the ring of a larger depthwise kernel is
    zero, and a block position past the network's depth gets a zero project conv (an identity). So
    every subnet at the network's depth with larger kernels or expand ratios -- the space's largest
    arch included -- computes the published network in float mode; smaller ones start from its
    leading channels and centre kernels, as OFA's subnets of the largest network do. Weight-quantizer
    scales are re-initialised from the loaded weights. ``bn_eps``/``classifier``: as for
    :func:`load_torchvision_weights` (a classifier left out stays the supernet's own)."""
    from qnas.quant.build import build_model
    from qnas.supernet.layers import DynamicQDepthwise

    state = _state(weights)
    network = torchvision_network(state)
    if network is None:
        n = len(_layers_in_order(state))
        raise CheckpointError(f"the weights are not a torchvision MobileNetV2 or MobileNetV3-Large state dict (its "
                              f"{n} conv/linear layers have neither network's shapes); a supernet loads the "
                              "published network's weights")
    arch = reference_in_space(supernet.space, network)
    ref = build_model(supernet.space, arch)
    loaded_head = _load_into_model(ref, state, TORCHVISION_BN_EPS[network] if bn_eps is None else bn_eps, classifier)
    layers = ref.quant_layers()
    if not loaded_head:  # a new classifier: the supernet keeps its own (seeded) one
        layers = layers[:-1]
    used: set[str] = set()
    for layer in layers:
        dst = supernet.get_submodule(layer.name)
        w = layer.module.weight.detach()
        if isinstance(dst, DynamicQDepthwise):
            c, k = w.shape[0], w.shape[-1]
            s = (dst.max_kernel - k) // 2
            dst.weight[:c].zero_()
            dst.weight[:c, :, s:s + k, s:s + k] = w
            for t in dst.transforms.values():
                t.copy_(torch.eye(t.shape[0], dtype=t.dtype))
        else:  # DynamicQConv2d / DynamicQLinear: the leading rows and columns; nothing from the other inputs
            cout, cin = w.shape[:2]
            if dst.weight.shape[2:] != w.shape[2:]:
                raise CheckpointError(f"supernet layer {layer.name!r} has kernel {tuple(dst.weight.shape[2:])}, the "
                                      f"published network {tuple(w.shape[2:])}")
            dst.weight[:cout].zero_()
            dst.weight[:cout, :cin] = w
            if layer.bias is not None:
                dst.bias[:cout] = layer.bias.detach()
        if layer.bn is not None:
            src, c = layer.bn, layer.bn.num_features
            for bn in supernet.get_submodule(layer.bn_name).bns.values():
                bn.weight[:c] = src.weight
                bn.bias[:c] = src.bias
                bn.running_mean[:c] = src.running_mean
                bn.running_var[:c] = src.running_var + (src.eps - bn.eps)
        if layer.block is not None:
            used.add(layer.block)
    for path, blk in supernet.named_blocks():
        if path not in used:  # deeper than the published network: an identity (residual, zero project)
            blk.project.weight.zero_()
    supernet.reset_weight_scales()
    return arch


def train_pretrained_supernet_run(out: str | os.PathLike[str], weights: str | os.PathLike[str], *,
                                  space: "SearchSpace | None", data: str = "digits", data_path: str | None = None,
                                  epochs: int | list[int] = 2, batch_size: int = 64, seed: int = 0,
                                  resume: bool = False, overwrite: bool = False, progress: bool = True,
                                  torch_device: str = "cpu", amp: str = "off", stream: bool = False,
                                  classifier: str = "auto", lr: float | None = None) -> list[dict[str, Any]]:
    """:func:`qnas.searching.train_supernet_run` from pretrained weights (``qnas supernet train
    --pretrained PATH``): the supernet starts from :func:`load_torchvision_weights_into_supernet`, then
    trains as usual. The file and the space are checked before the data is read or anything is written;
    with ``resume`` and a checkpoint in ``out`` the checkpoint's weights win (the file only starts a run)."""
    from qnas.quant.configs import validate_run_device
    from qnas.searching import check_supernet_out, train_supernet_run

    if space is None:
        raise ConfigError("--pretrained needs a search space that contains the published network: "
                          "--space mobilenetv2 or --space mobilenetv3-large (or a YAML with their stages)")
    validate_run_device(torch_device, amp)
    check_supernet_out(out, resume, overwrite)
    state = read_state_dict(weights)
    network = torchvision_network(state)
    if network is not None:  # a space without the network is refused before the supernet is built
        reference_in_space(space, network)
    return train_supernet_run(
        out, data=data, data_path=data_path, space=space, epochs=epochs, batch_size=batch_size, seed=seed,
        resume=resume, overwrite=overwrite, progress=progress, torch_device=torch_device, amp=amp, stream=stream,
        lr=lr, init=lambda supernet: load_torchvision_weights_into_supernet(supernet, state, classifier=classifier))
