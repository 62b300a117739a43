"""The standard mobile search spaces as presets.

Each preset is a plain search-space config (the mapping a YAML file holds), so
``qnas.presets.preset_yaml(name)`` writes it out and a YAML file can say the
same; :meth:`qnas.SearchSpace.from_yaml` accepts a preset name wherever it
accepts a file (``--space mobilenetv3-large``).

=====================  ==========================================================
``mobilenetv2``        MobileNetV2's macro structure (ReLU6, expand-1 first block,
                       1280 feature-mix conv); per stage depth, kernel {3,5,7},
                       expand {3,4,6}; :func:`reference_arch` is MobileNetV2-1.0
``mobilenetv3-large``  MobileNetV3-Large's structure (h-swish / ReLU per stage,
                       squeeze-excite stages, 960 mix conv, 1280 pre-classifier
                       linear); per stage choices that contain the published net,
                       expand 2.3 and 2.5 included; :func:`reference_arch` is it
``ofa-mbv3``           Once-for-All's MobileNetV3 space: depth {2,3,4}, kernel
                       {3,5,7}, expand {3,4,6} in 5 stages, resolution 128-224
``proxyless-mobile``   ProxylessNAS' mobile space: 4 positions per stage, each
                       k{3,5,7} x e{3,6} or skip (never a stage's first block)
``cifar-small``        a small 32x32, 10-class space for CIFAR-like data
=====================  ==========================================================

Bit widths are the default space's (a space may offer any of 2-8 / 4-8): weights {2, 4, 8}, activations {4, 8},
stem, head, feature-mix conv and pre-classifier at 8 bits, squeeze-excite at 8 bits.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qnas.errors import ConfigError

if TYPE_CHECKING:
    from qnas.arch import Arch
    from qnas.space import SearchSpace

_BITS: dict[str, Any] = {"w_bits": [2, 4, 8], "a_bits": [4, 8], "stem_head_w_bits": [8], "stem_head_a_bits": [8]}
_IMAGENET: dict[str, Any] = {"in_channels": 3, "num_classes": 1000, "stem_stride": 2, "stem_kernel": 3,
                             "expand1_no_conv": True, "allow_skip": False, **_BITS}


def _stage(channels: int, depths: list[int], stride: int, act: str, se: bool = False,
           kernels: list[int] | None = None, expands: list[float] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {"channels": channels, "depths": depths, "stride": stride}
    if kernels is not None:
        d["kernels"] = kernels
    if expands is not None:
        d["expands"] = expands
    if act != "relu":
        d["act"] = act
    if se:
        d["se"] = True
    return d


PRESETS: dict[str, dict[str, Any]] = {
    "mobilenetv2": {
        **_IMAGENET, "resolutions": [128, 160, 192, 224], "widths": [0.75, 1.0],
        "stem_channels": 32, "stem_act": "relu6", "mix_channels": 1280, "mix_act": "relu6",
        "kernels": [3, 5, 7], "expands": [3, 4, 6],
        "stages": [
            _stage(16, [1], 1, "relu6", kernels=[3], expands=[1]),
            _stage(24, [1, 2], 2, "relu6"),
            _stage(32, [2, 3], 2, "relu6"),
            _stage(64, [2, 3, 4], 2, "relu6"),
            _stage(96, [2, 3], 1, "relu6"),
            _stage(160, [2, 3], 2, "relu6"),
            _stage(320, [1], 1, "relu6"),
        ],
    },
    "mobilenetv3-large": {
        **_IMAGENET, "resolutions": [160, 192, 224], "widths": [1.0],
        "stem_channels": 16, "stem_act": "hswish", "mix_channels": 960, "mix_act": "hswish",
        "pre_head_channels": 1280, "pre_head_act": "hswish", "kernels": [3, 5, 7], "expands": [3, 4, 6],
        "stages": [
            _stage(16, [1], 1, "relu", kernels=[3], expands=[1]),
            _stage(24, [1, 2], 2, "relu", kernels=[3, 5], expands=[3, 4]),
            _stage(40, [2, 3], 2, "relu", se=True, kernels=[3, 5]),
            _stage(80, [2, 3, 4], 2, "hswish", kernels=[3, 5], expands=[2.3, 2.5, 3, 4, 6]),
            _stage(112, [1, 2], 1, "hswish", se=True, kernels=[3, 5]),
            _stage(160, [2, 3], 2, "hswish", se=True),
        ],
    },
    "ofa-mbv3": {
        **_IMAGENET, "resolutions": [128, 144, 160, 176, 192, 208, 224], "widths": [1.0],
        "stem_channels": 16, "stem_act": "hswish", "mix_channels": 960, "mix_act": "hswish",
        "pre_head_channels": 1280, "pre_head_act": "hswish", "kernels": [3, 5, 7], "expands": [3, 4, 6],
        "stages": [
            _stage(16, [1], 1, "relu", kernels=[3], expands=[1]),
            _stage(24, [2, 3, 4], 2, "relu"),
            _stage(40, [2, 3, 4], 2, "relu", se=True),
            _stage(80, [2, 3, 4], 2, "hswish"),
            _stage(112, [2, 3, 4], 1, "hswish", se=True),
            _stage(160, [2, 3, 4], 2, "hswish", se=True),
        ],
    },
    "proxyless-mobile": {
        **_IMAGENET, "resolutions": [160, 192, 224], "widths": [1.0], "allow_skip": True,
        "stem_channels": 32, "stem_act": "relu6", "mix_channels": 1280, "mix_act": "relu6",
        "kernels": [3, 5, 7], "expands": [3, 6],
        "stages": [
            _stage(16, [1], 1, "relu6", kernels=[3], expands=[1]),
            _stage(24, [4], 2, "relu6"),
            _stage(40, [4], 2, "relu6"),
            _stage(80, [4], 2, "relu6"),
            _stage(96, [4], 1, "relu6"),
            _stage(192, [4], 2, "relu6"),
            _stage(320, [1], 1, "relu6"),
        ],
    },
    "cifar-small": {
        "in_channels": 3, "num_classes": 10, "resolutions": [24, 32], "widths": [0.75, 1.0],
        "stem_channels": 16, "stem_stride": 1, "stem_kernel": 3, "stem_act": "relu6", "expand1_no_conv": True,
        "mix_channels": 512, "mix_act": "hswish", "kernels": [3, 5], "expands": [3, 4, 6], "allow_skip": False,
        **_BITS,
        "stages": [
            _stage(16, [1], 1, "relu6", kernels=[3], expands=[1]),
            _stage(24, [1, 2], 2, "relu6"),
            _stage(40, [2, 3], 2, "relu6", se=True),
            _stage(80, [2, 3], 2, "hswish"),
            _stage(112, [1, 2], 1, "hswish", se=True),
        ],
        # 5x5 at expand 6 in the 16x16 stage costs most and helps least on 32-px images
        "exclude": [{"stage": 1, "kernel": 5, "expand": 6}],
    },
}

#: (kernel, expand) of each block of the published networks, stage by stage (bits all 8)
_REFERENCE_BLOCKS: dict[str, list[list[tuple[int, float]]]] = {
    "mobilenetv2": [[(3, 1)], [(3, 6)] * 2, [(3, 6)] * 3, [(3, 6)] * 4, [(3, 6)] * 3, [(3, 6)] * 3, [(3, 6)]],
    "mobilenetv3-large": [[(3, 1)], [(3, 4), (3, 3)], [(5, 3)] * 3, [(3, 6), (3, 2.5), (3, 2.3), (3, 2.3)],
                          [(3, 6)] * 2, [(5, 6)] * 3],
}


def is_preset_name(name: str) -> bool:
    """Whether ``name`` names a preset (case-insensitive)."""
    return name.lower() in PRESETS


def _check(name: str) -> str:
    key = str(name).lower()
    if key not in PRESETS:
        raise ConfigError(f"unknown search-space preset {name!r}; choose one of {', '.join(PRESETS)} or give a YAML file")
    return key


def preset_dict(name: str) -> dict[str, Any]:
    """The config of preset ``name`` as plain data (what its YAML file holds); a fresh copy."""
    return copy.deepcopy(PRESETS[_check(name)])


def preset_space(name: str) -> "SearchSpace":
    """The :class:`~qnas.space.SearchSpace` of preset ``name``."""
    from qnas.space import SearchSpace

    return SearchSpace.from_dict(preset_dict(name))


def preset_yaml(name: str, path: str | Path | None = None) -> str:
    """Preset ``name`` as YAML text (also written to ``path`` when given); loading that file gives the same space."""
    import yaml

    text = f"# qnas search space: preset {_check(name)}\n" + yaml.safe_dump(preset_dict(name), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text


def reference_arch(name: str, resolution: int | None = None, w_bits: int = 8, a_bits: int = 8) -> "Arch":
    """The published network of a preset (MobileNetV2-1.0, MobileNetV3-Large) at ``resolution``
    (default: the largest), every layer at ``w_bits``/``a_bits``; for the other presets their
    largest arch (:meth:`SearchSpace.uniform`)."""
    from qnas.arch import Arch, Block

    key = _check(name)
    space = preset_space(key)
    if key not in _REFERENCE_BLOCKS:
        return space.uniform(w_bits, a_bits, resolution=resolution)
    c = space.config
    stages = tuple(tuple(Block(k, e, (w_bits,) * 3, (a_bits,) * 3) for k, e in stage)
                   for stage in _REFERENCE_BLOCKS[key])
    sh = (max(c.stem_head_w_bits), max(c.stem_head_a_bits))
    # an op without expand conv decodes its expand-conv bits as the first choice: say so here too
    arch = space.decode(space.encode(Arch(resolution or max(c.resolutions), 1.0, stages, sh, sh)))
    return arch
