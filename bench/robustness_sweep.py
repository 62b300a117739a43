#!/usr/bin/env python
"""Is every bad or hostile input refused with exit 2 and one line, before any work, leaving nothing
behind and no user file changed? (issue 14, item 6)

    python bench/robustness_sweep.py [--only PREFIX ...] [--hard-limit 15] [--out bench/results/robustness_sweep.json]

Runs every case of ``tests/robustness/cases.py`` (bad numbers for each numeric option of each command, bad
files, bad data and calibration sets, bad output paths, unknown names, damaged runs to resume, contradictory
flags, and some of them again without --no-progress): in this process, except a sample through the installed
``qnas`` entry point. Counts: tried / clean (exit 2, one stderr line, no traceback, nothing left, nothing
changed, within 10 s) / leftover (files left behind) / lost (a user file changed or removed) / other (any
other failure: exit status, lines, traceback, time); a case can count in more than one. Prints and saves
the counts and, per failing case, its id and what went wrong. Cases still running after --hard-limit
seconds are stopped (they are doing work they should have refused).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="*", default=[], metavar="PREFIX", help="only cases whose id starts so")
    p.add_argument("--hard-limit", type=float, default=15.0, help="stop a case after this many seconds")
    p.add_argument("--out", default=str(ROOT / "bench/results/robustness_sweep.json"))
    a = p.parse_args()

    import torch

    import tests.robustness.sweep as sweep_module
    from tests.robustness.cases import ENTRY_POINT_SAMPLE, all_cases

    sweep_module.HARD_LIMIT_S = a.hard_limit
    cases = [c for c in all_cases() if not a.only or any(c.id.startswith(o) for o in a.only)]
    print(f"{len(cases)} cases ({len(ENTRY_POINT_SAMPLE)} through {' '.join(sweep_module.entry_point())})",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="qnas-sweep-") as d:
        result = sweep_module.sweep(cases, Path(d), subprocess_ids=ENTRY_POINT_SAMPLE,
                                    log=lambda line: print("  not clean:", line[:400], flush=True))
    c = result["counts"]
    print(f"tried {c['tried']}  clean {c['clean']}  leftover {c['leftover']}  lost {c['lost']}  other {c['other']}"
          f"  ({result['seconds']:.0f} s)")
    for name, cat in result["categories"].items():
        print(f"  {name:9s} {cat['clean']:4d} / {cat['tried']:4d} clean  ({cat['seconds']:.0f} s)")
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__,
                         "processor": platform.processor() or platform.machine()}
    result["hard_limit_s"] = a.hard_limit
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
