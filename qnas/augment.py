"""Per-image training augmentation and evaluation resizing, in plain torch.

The standard recipes: random-resized-crop + horizontal flip for ImageNet-like
data (Szegedy et al.; the parameters and fallback of torchvision's
``RandomResizedCrop``), pad-4-and-crop + flip for CIFAR-like data, and
resize-then-centre-crop (ratio 0.875) for ImageNet-like evaluation.

Why not torchvision: its PyPI wheels are built against CUDA torch
(``libc10_cuda.so``) and do not import next to the CPU torch build qnas pins,
and a CPU torchvision exists only outside PyPI. These few functions are what
qnas needs of it.

Every function takes a ``(C, H, W)`` float tensor and a ``torch.Generator``
(so worker processes draw reproducible, independent streams) and returns a
``(C, size, size)`` tensor.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["AUGMENT_POLICIES", "resize", "resize_batch", "random_resized_crop", "pad_crop", "hflip_maybe",
           "center_crop_resize", "train_transform", "eval_transform"]

#: ``imagenet``: random-resized-crop + flip; ``cifar``: pad-4-crop + flip; ``none``: resize only.
AUGMENT_POLICIES: tuple[str, ...] = ("imagenet", "cifar", "none")

_EVAL_CROP = 0.875  # ImageNet convention: resize to size/0.875, centre-crop size


def resize(img: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of one ``(C, H, W)`` image to ``size`` x ``size`` (anti-aliased when shrinking)."""
    return resize_batch(img[None], size)[0]


def resize_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a ``(N, C, H, W)`` batch (anti-aliased when shrinking): one batch read at
    the largest resolution serves every subnet's resolution (elastic-resolution supernet training)."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < h or size < w)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def random_resized_crop(img: torch.Tensor, size: int, gen: torch.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """A crop of random area share ``scale`` and aspect ``ratio``, resized to ``size``.

    Ten tries to fit the crop in the image, then the central crop at the
    nearest allowed ratio: torchvision's rule.
    """
    h, w = int(img.shape[-2]), int(img.shape[-1])
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(gen, *scale)
        aspect = math.exp(_uniform(gen, *log_ratio))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (), generator=gen))
            left = int(torch.randint(0, w - cw + 1, (), generator=gen))
            return resize(img[:, top:top + ch, left:left + cw], size)
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    top, left = (h - ch) // 2, (w - cw) // 2
    return resize(img[:, top:top + ch, left:left + cw], size)


def pad_crop(img: torch.Tensor, size: int, gen: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Resize to ``size``, zero-pad by ``padding`` pixels and take a random ``size`` crop (CIFAR recipe)."""
    x = F.pad(resize(img, size), (padding,) * 4)
    top = int(torch.randint(0, 2 * padding + 1, (), generator=gen))
    left = int(torch.randint(0, 2 * padding + 1, (), generator=gen))
    return x[:, top:top + size, left:left + size]


def hflip_maybe(img: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror left-right with probability 1/2."""
    return img.flip(-1) if float(torch.rand((), generator=gen)) < 0.5 else img


def center_crop_resize(img: torch.Tensor, size: int, crop: float = _EVAL_CROP) -> torch.Tensor:
    """The central ``crop`` share of the shorter side, resized to ``size`` (ImageNet evaluation)."""
    h, w = int(img.shape[-2]), int(img.shape[-1])
    side = max(1, int(round(min(h, w) * crop)))
    top, left = (h - side) // 2, (w - side) // 2
    return resize(img[:, top:top + side, left:left + side], size)


def train_transform(img: torch.Tensor, size: int, policy: str, gen: torch.Generator) -> torch.Tensor:
    """The training view of one image under ``policy`` (one of :data:`AUGMENT_POLICIES`)."""
    if policy == "imagenet":
        return hflip_maybe(random_resized_crop(img, size, gen), gen)
    if policy == "cifar":
        return hflip_maybe(pad_crop(img, size, gen), gen)
    return resize(img, size)


def eval_transform(img: torch.Tensor, size: int, policy: str) -> torch.Tensor:
    """The evaluation view: centre crop for ``imagenet``-like data, a plain resize otherwise."""
    if policy == "imagenet":
        return center_crop_resize(img, size)
    return resize(img, size)
