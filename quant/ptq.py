"""Post-training quantization of a qnas Brevitas model with Brevitas' own PTQ tools.

Methods are cumulative (``PTQConfig.method``), in the order Brevitas' ImageNet
PTQ example (``brevitas_examples/imagenet_classification/ptq/ptq_evaluate.py``)
applies them:

========================  ============================================================
``minmax``                BN re-estimation (float) -> weight scales from the current
                          weights' per-channel abs-max -> activation ranges from
                          ``brevitas.graph.calibrate.calibration_mode`` (each activation
                          quantizer's own statistic over the whole calibration set).
``bias_correction``       ``minmax`` + ``bias_correction_mode``.
``gptq``                  ``minmax`` + ``brevitas.graph.gptq.gptq_mode`` (layer by layer,
                          float activations, no ``weight_orig`` copy) + bias correction.
========================  ============================================================

So for ``gptq`` the order is: BN re-estimation, weight scales, activation
calibration, GPTQ weight rounding, bias correction.

The model keeps its structure (and state-dict keys) so checkpoints, ``load_model``
and every exporter keep working: Brevitas' bias correction gives a biasless conv a
``bias`` parameter; qnas folds that bias into the BatchNorm that follows the conv
(``running_mean -= bias``, exact in eval mode) and removes it again.

:func:`float_mode` disables every quantizer (weights, activations, biases), for
float training, a float teacher or a "float accuracy" figure.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from qnas.quant import batchnorm as _batchnorm
from qnas.quant.configs import PTQ_METHODS, PTQConfig
from qnas.quant.errors import QnasError

__all__ = ["PTQConfig", "ptq", "float_mode", "PTQ_METHODS", "reset_weight_scales",
           "reset_act_scales", "recalibrate_bn_float", "load_float_weights"]



# --------------------------------------------------------------------------- #
# float mode
# --------------------------------------------------------------------------- #
@contextmanager
def float_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` with every Brevitas quantizer disabled (weights, activations,
    biases; activation functions such as QuantReLU's ReLU still apply).

    Works for training too: gradients flow to the float weights and no quantizer
    scale or statistic is touched. The previous state is restored on exit.

    >>> with float_mode(model):
    ...     float_logits = model(x)
    """
    from brevitas.graph.calibrate import quantization_status_manager

    try:
        with quantization_status_manager(model, disable_act_quant=True, disable_weight_quant=True,
                                         disable_bias_quant=True):
            yield model
    finally:
        # Brevitas restores the quantizers' train/eval flag as it was on entry; re-sync
        # every submodule with the model's current flag (the body may have called
        # model.eval()), so eval-mode activation quantizers never collect statistics.
        model.train(model.training)


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def _expected_input(model: nn.Module) -> tuple[int, int] | None:
    plan = getattr(model, "plan", None)
    if plan is not None and hasattr(plan, "in_channels") and hasattr(plan, "resolution"):
        return int(plan.in_channels), int(plan.resolution)
    return None


def _check_calib(model: nn.Module, calib: Any) -> torch.Tensor:
    if hasattr(calib, "images") and isinstance(getattr(calib, "images"), torch.Tensor):
        calib = calib.images  # a CalibrationSet
    if not isinstance(calib, torch.Tensor):
        raise QnasError(f"calibration data must be a tensor or a CalibrationSet, got {type(calib).__name__}; "
                        "build one with `qnas calib build`")
    if calib.dim() != 4:
        raise QnasError(f"calibration data must be 4-D (N, C, H, W), got shape {tuple(calib.shape)}; "
                        "build it with `qnas calib build`")
    if calib.shape[0] == 0:
        raise QnasError("calibration data is empty; build a calibration set with --n of at least 64")
    if not torch.is_floating_point(calib):
        raise QnasError(f"calibration data must be float (normalized) images, got {calib.dtype}; "
                        "build it with `qnas calib build`")
    exp = _expected_input(model)
    if exp is not None:
        c, r = exp
        have = tuple(int(v) for v in calib.shape[1:])
        if have != (c, r, r):
            fix = (f"rebuild with --resolution {r}" if have[0] == c
                   else f"rebuild it from a data set with {c} channel(s)")
            raise QnasError(f"calibration images are {'x'.join(map(str, have))} but the model expects "
                            f"{c}x{r}x{r}; {fix}")
    if not bool(torch.isfinite(calib).all()):
        raise QnasError("calibration data contains NaN or Inf values; rebuild the calibration set from clean data")
    return calib.detach().to(torch.float32)


def _batches(x: torch.Tensor, bs: int) -> list[torch.Tensor]:
    return [x[i:i + bs] for i in range(0, x.shape[0], bs)]


def _bar(it, desc: str, progress: bool, total: int | None = None):
    return tqdm(it, desc=desc, disable=not progress, leave=False, total=total)


def recalibrate_bn_float(model: nn.Module, calib: torch.Tensor, batch_size: int = 64, progress: bool = False) -> None:
    """BN statistics of the float model (every quantizer off) over all of ``calib`` in batches
    of ``batch_size`` (:func:`qnas.quant.batchnorm.recalibrate_bn` in :func:`float_mode`);
    leaves the model in eval mode."""
    with float_mode(model):
        _batchnorm.recalibrate_bn(model, _batches(calib, batch_size), batches=None, progress=progress,
                                  desc="PTQ: BN statistics")
    model.eval()


@torch.no_grad()
def reset_weight_scales(model: nn.Module) -> int:
    """Re-initialise every stats-initialised weight scale from the current weights.

    Brevitas' ``ParameterFromStatsFromParameterScaling`` (our weights'
    ``PARAMETER_FROM_STATS``) computes its scale from the weights on the first
    forward (or takes it from a loaded state dict) and then keeps it as a learned
    parameter; weights that changed afterwards (float training, a supernet
    checkpoint) would keep a stale scale. Returns how many scales were reset."""
    from brevitas.core.scaling.standalone import ParameterFromStatsFromParameterScaling
    from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer as QuantWBIOL

    count = 0
    for m in model.modules():
        if isinstance(m, ParameterFromStatsFromParameterScaling):
            m.value.data.fill_(1.0)  # init multiplies value in place by the statistic
            m.init_done = False
            count += 1
    for m in model.modules():
        if isinstance(m, QuantWBIOL) and m.weight_quant.is_quant_enabled:
            m.quant_weight()  # first call computes the scale from the weights
    return count


@torch.no_grad()
def reset_act_scales(model: nn.Module) -> int:
    """Put every runtime-stats activation scale back in its statistics-collection
    phase, so calibration (not an earlier QAT/initialisation) sets it."""
    from brevitas.core.scaling.standalone import ParameterFromRuntimeStatsScaling

    count = 0
    for m in model.modules():
        if isinstance(m, ParameterFromRuntimeStatsScaling):
            m.counter = 0
            m.buffer.fill_(1.0)
            m.value.data.fill_(1.0)
            count += 1
    return count


def _is_quantizer_key(key: str) -> bool:
    return "_quant." in key or key.startswith(("weight_quant", "input_quant", "act_quant", "output_quant")) \
        or ".tensor_quant." in key


@torch.no_grad()
def load_float_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Copy the float weights, biases and BN statistics of ``state`` into ``model``,
    ignoring quantizer state (scales) on both sides, so a model of the same
    topology but other bit widths (or a float-trained one) can be post-training
    quantized. A missing or mis-shaped float tensor is a one-line :class:`QnasError`."""
    own = model.state_dict()
    if hasattr(model, "upgrade_state_dict"):  # float weights saved under the old module names
        state = model.upgrade_state_dict(dict(state))
    floats = {k: v for k, v in own.items() if not _is_quantizer_key(k)}
    missing = [k for k in floats if k not in state]
    if missing:
        raise QnasError(f"float weights lack {len(missing)} tensor(s) of the model, e.g. {missing[0]!r}; "
                        "pass weights of the same arch (same kernels, expands, depths, width)")
    for k in floats:
        if tuple(state[k].shape) != tuple(own[k].shape):
            raise QnasError(f"float weight {k!r} has shape {tuple(state[k].shape)} but the model needs "
                            f"{tuple(own[k].shape)}; pass weights of the same arch")
    own_params = dict(model.named_parameters())
    own_buffers = dict(model.named_buffers())
    for k in floats:
        t = own_params.get(k, own_buffers.get(k))
        if t is not None:
            t.data.copy_(state[k].to(t.dtype))
    return model


@torch.no_grad()
def _fold_new_biases(model: nn.Module, biasless: list[nn.Module]) -> int:
    # each conv's output goes straight into its BN (QuantNet's typed layer views say which)
    pairs = {layer.module: layer.bn for layer in model.quant_layers() if layer.bn is not None}
    folded = 0
    for conv in biasless:
        bias = getattr(conv, "bias", None)
        if bias is None or conv not in pairs:
            continue
        bn = pairs[conv]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        # BN(y + b) == BN'(y) with running_mean' = running_mean - b (eval mode)
        bn.running_mean.sub_(bias.detach().to(bn.running_mean.dtype))
        del conv._parameters["bias"]
        conv.register_parameter("bias", None)
        folded += 1
    return folded


# --------------------------------------------------------------------------- #
# PTQ
# --------------------------------------------------------------------------- #
def ptq(model: nn.Module, calib: Any, config: PTQConfig | None = None) -> nn.Module:
    """Post-training-quantize ``model`` in place from its float weights and return it.

    ``calib`` is a float ``(N, C, H, W)`` tensor of preprocessed images (or a
    :class:`~qnas.calib_data.calibration.CalibrationSet`). Weight scales are
    re-initialised from the current weights; activation scales come from the
    calibration data; see the module docstring for the methods."""
    from brevitas.graph.calibrate import bias_correction_mode, calibration_mode
    from brevitas.graph.gptq import gptq_mode

    cfg = (config or PTQConfig()).validate()
    x = _check_calib(model, calib)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = x.to(dev)
    batches = _batches(x, cfg.batch_size)
    model.eval()

    if cfg.bn_recalibrate:
        recalibrate_bn_float(model, x, cfg.batch_size, cfg.progress)

    with torch.no_grad():
        reset_weight_scales(model)
        reset_act_scales(model)
        with calibration_mode(model):
            for xb in _bar(batches, "PTQ: activation ranges", cfg.progress):
                model(xb)
    model.eval()

    if cfg.method == "gptq":
        with torch.no_grad():
            with gptq_mode(model, use_quant_activations=False, create_weight_orig=False,
                           act_order=cfg.gptq_act_order) as gptq:
                gmodel = gptq.model
                for _ in _bar(range(gptq.num_layers), "PTQ: GPTQ layers", cfg.progress):
                    for xb in batches:
                        gmodel(xb)
                    gptq.update()
        model.eval()

    if cfg.method in ("bias_correction", "gptq"):
        from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer as QuantWBIOL

        biasless = [m for m in model.modules() if isinstance(m, QuantWBIOL) and m.bias is None]
        with torch.no_grad():
            with bias_correction_mode(model):
                for xb in _bar(batches, "PTQ: bias correction", cfg.progress):
                    model(xb)
            _fold_new_biases(model, biasless)
        model.eval()

    bad = [n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise QnasError(f"PTQ produced NaN/Inf in {bad[0]}; check the calibration data and the float weights")
    return model



def __getattr__(name: str) -> Any:
    # One release of grace for the old name (its signature differs from qnas.quant.batchnorm.recalibrate_bn).
    if name == "recalibrate_bn":
        import warnings

        warnings.warn("qnas.quant.ptq.recalibrate_bn(model, images, batch_size) is deprecated; use "
                      "recalibrate_bn_float (float statistics over a tensor of images) or "
                      "qnas.quant.batchnorm.recalibrate_bn(model, loader, batches)", DeprecationWarning, stacklevel=2)
        return recalibrate_bn_float
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
