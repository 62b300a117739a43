"""The activation functions the TFLite and CoreML backends write, read off the model's modules.

A layer view (:class:`~qnas.quant.layer_view.QuantLayer`) names the activation after its
BatchNorm (``act``: relu, relu6, hswish, or hsigmoid for a squeeze-excite gate) and the module
that applies it (``relu``: a plain ``nn.ReLU``/``nn.ReLU6``/``nn.Hardswish`` or the Brevitas
activation quantizer that applies it before quantizing). :func:`check_activation` makes sure
the two agree, so an exporter never writes an activation the model does not compute."""
from __future__ import annotations

from torch import nn

from qnas.quant.errors import ExportError

#: activation name -> float torch module class (what Brevitas' quantizers wrap too)
_KINDS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hswish",
                                     nn.Hardsigmoid: "hsigmoid"}


def activation_kind(module: nn.Module) -> str | None:
    """``relu``/``relu6``/``hswish``/``hsigmoid`` for a float activation module or a Brevitas
    activation quantizer applying one (``QuantReLU``, ``QuantNonLinearActLayer``); None otherwise."""
    proxy = getattr(getattr(module, "act_quant", None), "fused_activation_quant_proxy", None)
    impl = getattr(proxy, "activation_impl", None) if proxy is not None else module
    return _KINDS.get(type(impl)) if impl is not None else None


def check_activation(model: nn.Module, layer: object, backend: str, supported: tuple[str, ...]) -> str | None:
    """The activation a :class:`~qnas.quant.layer_view.QuantLayer` applies (None: linear), after
    checking that the module at ``layer.relu`` computes ``layer.act`` and that ``backend`` writes it."""
    where = getattr(layer, "relu", None)
    if where is None:
        return None
    want = getattr(layer, "act", "relu")
    got = activation_kind(model.get_submodule(where))
    if got != want:
        raise ExportError(f"the {backend} exporter expects a {want} at {where}, found {got or 'something else'}")
    if want not in supported:
        raise ExportError(f"the {backend} backend cannot export a {want} activation (layer {layer.name})")
    return want
