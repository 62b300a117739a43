#!/usr/bin/env python3
"""Time every layer of a qnas latency kit in CoreML and write KIT/results.csv (macOS only).

Written by `qnas latency kit --backend coreml`; needs only numpy and
coremltools (`pip install coremltools`) on a Mac: CoreML prediction exists
only on macOS. Run it to measure:

    python run_coreml.py --compute-units ALL              # let CoreML place layers (CPU, GPU, Neural Engine)
    python run_coreml.py --compute-units CPU_AND_NE --device m2-ane

then, where qnas is installed: `qnas latency import KIT/results.csv --out table.json`.

Each layer (an ML program, .mlpackage, stored as the coreml exporter stores
the model's weights) is loaded once (CoreML compiles it) and timed batch 1:
the median of --repeats predict() calls after --warmup. predict() goes through
Python and copies its input and output, so sub-0.1 ms layers are dominated by
that cost; --threads is recorded but CoreML chooses its own threads.
"""
#@COMMON@

try:
    import coremltools as ct
except ImportError:
    fail("coremltools is not installed: pip install coremltools (CoreML prediction needs macOS)")


def main():
    p = base_parser(__doc__.splitlines()[0], "run_coreml.py")
    p.add_argument("--compute-units", default="ALL", choices=["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"],
                   help="CoreML compute units (default ALL)")
    a = p.parse_args()
    check_args(a)
    if sys.platform != "darwin":
        fail("CoreML prediction needs macOS; copy the kit to a Mac and run it there")
    manifest = load_manifest(a.kit)
    rng = np.random.default_rng(0)
    units = getattr(ct.ComputeUnit, a.compute_units)

    def time_file(entry):
        model = ct.models.MLModel(os.path.join(a.kit, entry["file"]), compute_units=units)
        feeds = {i["name"]: random_input(tuple(i["shape"]), i.get("dtype", "float32"), rng) for i in entry["inputs"]}
        return median_ms(lambda: model.predict(feeds), a.warmup, a.repeats)

    runtime = "CoreML (coremltools %s) %s" % (ct.__version__, a.compute_units)
    return measure_kit(a, manifest, time_file, runtime, "ML program per layer, predict() timed from Python")


if __name__ == "__main__":
    sys.exit(main())
