# ---- kit runner: common part (stdlib + numpy only; inlined into every Python runner by `qnas latency kit`) ----
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

KIT_SCHEMA = "qnas-latency-kit"
RESULTS_SCHEMA = "qnas-latency-kit-results"
VERSION = 1
KEY_FIELDS = ("op", "cin", "cout", "hw", "k", "stride", "groups", "w_bits", "a_bits")
HERE = os.path.dirname(os.path.abspath(__file__))


def fail(msg):
    """Print one error line and exit 2."""
    print("error: " + msg, file=sys.stderr)
    sys.exit(2)


def load_manifest(kit):
    path = os.path.join(kit, "manifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        fail("cannot read %s (%s); pass --kit KIT, the folder `qnas latency kit` wrote" % (path, e))
    if not isinstance(m, dict) or m.get("schema") != KIT_SCHEMA:
        fail("%s is not a qnas latency kit manifest (schema %r)" % (path, m.get("schema") if isinstance(m, dict) else None))
    if m.get("version", 0) > VERSION:
        fail("%s is kit version %s; this runner reads up to %d: rewrite the kit" % (path, m.get("version"), VERSION))
    return m


def cpu_name():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                  timeout=5).stdout.strip() or platform.machine()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown cpu"


def host_info():
    return {"name": platform.node(), "cpu": cpu_name(), "os": platform.platform(), "machine": platform.machine(),
            "python": platform.python_version(), "numpy": np.__version__}


def base_parser(description, runner):
    p = argparse.ArgumentParser(prog=runner, description=description)
    p.add_argument("--kit", default=HERE, help="the kit folder (default: this script's folder)")
    p.add_argument("--out", help="results CSV to write (default: KIT/results.csv)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before timing each layer (default 5)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per layer; the median is kept (default 20)")
    p.add_argument("--passes", type=int, default=1,
                   help="sweeps over all layers; each keeps its fastest median (default 1; use 2-3 on a busy machine)")
    p.add_argument("--device", help="name of this device in the table (default: CPU model and runtime)")
    p.add_argument("--only", metavar="TEXT", help="time only layer files whose name contains TEXT (for a quick try)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    return p


def check_args(a):
    if a.threads < 1 or a.warmup < 0 or a.repeats < 1 or a.passes < 1:
        fail("need --threads >= 1, --warmup >= 0, --repeats >= 1 and --passes >= 1")
    a.kit = os.path.abspath(a.kit)
    a.out = a.out or os.path.join(a.kit, "results.csv")
    if os.path.exists(a.out) and not a.force:
        fail("%s exists; pass --force to overwrite it or --out another file" % a.out)


def random_input(shape, dtype, rng):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, int(info.max) + 1, size=shape).astype(dtype)


def median_ms(run, warmup, repeats):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def measure_kit(a, manifest, time_file, runtime, notes, extra_meta=None):
    """Time every layer file of the kit with ``time_file(entry) -> ms`` and write the results CSV."""
    files = [f for f in manifest["files"] if not a.only or a.only in f["file"]]
    if not files:
        fail("no layer file matches --only %r" % a.only)
    best, failed = {}, {}
    n = len(files) * a.passes
    t0 = time.time()
    for i in range(n):
        f = files[i % len(files)]
        if f["file"] in failed:
            continue
        try:
            ms = float(time_file(f))
            if not math.isfinite(ms) or ms < 0:
                raise ValueError("timed %r ms" % ms)
        except Exception as e:  # one bad layer must not lose the others: listed at the end and in the CSV
            failed[f["file"]] = ("%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0] if str(e).strip() else ""))[:300]
            best.pop(f["file"], None)
            continue
        best[f["file"]] = min(ms, best.get(f["file"], math.inf))
        if sys.stderr.isatty():
            print("\r%d/%d layers (%.0f s)" % (i + 1, n, time.time() - t0), end="", file=sys.stderr)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    meta = {
        "device": a.device or "%s / %s" % (cpu_name(), runtime),
        "runtime": runtime,
        "threads": a.threads,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "notes": "batch 1, fastest of %d pass(es) of a median of %d runs after %d warm-up, one model per layer; %s"
                 % (a.passes, a.repeats, a.warmup, notes),
        "kit": {"schema": RESULTS_SCHEMA, "version": VERSION, "kit_id": manifest.get("kit_id"),
                "backend": manifest.get("backend"), "runner": os.path.basename(sys.argv[0]),
                "layers_timed": len(best), "layers_failed": len(failed)},
        "host": host_info(),
    }
    meta.update(extra_meta or {})
    lines = ["# %s version %d" % (RESULTS_SCHEMA, VERSION), "# meta: " + json.dumps(meta),
             ",".join(KEY_FIELDS + ("ms", "file"))]
    for e in manifest["layers"]:
        if e["file"] in best:
            lines.append(",".join(str(e[k]) for k in KEY_FIELDS) + ",%r,%s" % (round(best[e["file"]], 6), e["file"]))
    for name, why in sorted(failed.items()):
        lines.append("# failed: %s: %s" % (name, why.replace("\n", " ")))
    tmp = a.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, a.out)
    print("timed %d of %d layer files in %.1f s with %s (%d thread(s)); wrote %s"
          % (len(best), len(files), time.time() - t0, runtime, a.threads, a.out))
    for name, why in sorted(failed.items()):
        print("  FAILED %s: %s" % (name, why), file=sys.stderr)
    if failed:
        print("%d layer file(s) failed; the CSV lists them as '# failed:' lines" % len(failed), file=sys.stderr)
        return 1
    print("next: qnas latency import %s --out table.json" % a.out)
    return 0
# ---- end of the common part ----
