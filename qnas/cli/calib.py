"""``qnas calib {build,show}`` (also ``python -m qnas.calib_data`` and ``python calib_data/build_calib.py``):
parse and call :mod:`qnas.calib_data`.

    qnas calib build --from digits --n 512 --out calib.npz [--resolution R | --arch RUN_OR_ARCH_JSON]
    qnas calib build --from npz data.npz --model runs/x/model.pt --out calib.npz
    qnas calib show calib.npz

User errors print one line on stderr and exit with status 2; nothing is written.
"""
from __future__ import annotations

import argparse
from typing import Any, Sequence

from qnas.cli._args import OneLineErrorParser, non_negative_int, positive_int, resolution_int, seed_int
from qnas.dataset_kinds import DATASET_KINDS

__all__ = ["add_calib_parser", "build_parser", "cmd_calib_build", "cmd_calib_show", "main"]


def cmd_calib_build(a: argparse.Namespace) -> int:
    from qnas.calib_data.build import build_calibration_file

    cs, path = build_calibration_file(a.out, a.source, a.src, overwrite=a.force, n=a.n, resolution=a.resolution,
                                      seed=a.seed, split=a.split, min_per_class=a.min_per_class,
                                      split_seed=a.split_seed, arch=a.arch, model=a.model)
    counts = cs.class_counts()
    print(f"wrote {path}: {len(cs)} images of {cs.channels}x{cs.resolution[0]}x{cs.resolution[1]} from "
          f"{cs.meta['source']} ({cs.meta['split']} split), {len(counts)} classes x "
          f"{min(counts.values())}-{max(counts.values())}, seed {cs.meta['seed']}")
    return 0


def cmd_calib_show(a: argparse.Namespace) -> int:
    from qnas.calib_data.calibration import CalibrationSet

    print(CalibrationSet.load(a.path).describe())
    return 0


def _add_build_args(b: argparse.ArgumentParser) -> None:
    b.add_argument("--from", dest="source", required=True, choices=list(DATASET_KINDS), help="data set kind")
    b.add_argument("src", nargs="?", metavar="SRC", help="data location (none for digits)")
    b.add_argument("--n", type=positive_int, default=512, help="number of images (default 512), split evenly over classes")
    b.add_argument("--out", required=True, help="calibration file to write (.npz)")
    res = b.add_mutually_exclusive_group()
    res.add_argument("--resolution", type=resolution_int, help="image size the model takes (default: the data's own)")
    res.add_argument("--arch", metavar="RUN_OR_ARCH_JSON",
                     help="take the resolution from an arch JSON file, a run directory or a model.pt")
    b.add_argument("--model", metavar="MODEL_OR_RUN",
                   help="finished model (model.pt or its run dir): use its resolution, normalization and split seed")
    b.add_argument("--seed", type=seed_int, default=0, help="sampling seed (default 0)")
    b.add_argument("--split", default="train", choices=["train", "val"],
                   help="part of the seeded split to draw from (default train; test is never used)")
    b.add_argument("--split-seed", type=seed_int, default=0, help="seed of the train/val/test split (default 0, as search uses)")
    b.add_argument("--min-per-class", type=non_negative_int, default=1, help="fail unless every class gets this many images")
    b.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def _add_actions(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="calib_command", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="sample a calibration set and write it as .npz",
                       description="Sample N images, balanced over classes, from the seeded training split; "
                                   "resize to the model's resolution and normalize as the model expects.")
    _add_build_args(b)
    b.set_defaults(func=cmd_calib_build)
    s = sub.add_parser("show", help="print a calibration set's metadata and per-class counts")
    s.add_argument("path", metavar="PATH", help="calibration .npz")
    s.set_defaults(func=cmd_calib_show)


def add_calib_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``calib {build,show}`` to an argparse ``subparsers`` object; returns the ``calib`` parser.

    Each sub-command sets ``func`` (taking the parsed namespace, returning an exit
    code, raising :class:`qnas.errors.QnasError` on user errors)."""
    c = subparsers.add_parser("calib", help="build and inspect calibration sets for PTQ / TFLite",
                              description="Class-balanced, seeded calibration sets drawn from the training split.")
    _add_actions(c)
    return c


def build_parser(prog: str = "python -m qnas.calib_data") -> argparse.ArgumentParser:
    """The calibration commands as a program of their own."""
    p = OneLineErrorParser(prog=prog, description="Build and inspect qnas calibration sets.")
    _add_actions(p)
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m qnas.calib_data") -> int:
    from qnas.cli import run_parsed

    return run_parsed(build_parser(prog).parse_args(argv))
