#!/usr/bin/env python3
"""Time every layer of a qnas latency kit in onnxruntime and write KIT/results.csv.

Written by `qnas latency kit --backend onnx`; needs only numpy and onnxruntime
(`pip install numpy onnxruntime`, or onnxruntime-gpu / -directml / -qnn ... for
other execution providers). Run it on the device to measure:

    python run_onnx.py --threads 1                # CPU, 1 thread
    python run_onnx.py --providers CUDAExecutionProvider,CPUExecutionProvider --device my-gpu

then, where qnas is installed: `qnas latency import KIT/results.csv --out table.json`.

Each layer model is timed as `qnas latency measure` times it: batch 1, one
InferenceSession per layer (sequential execution, --threads intra-op threads),
the median of --repeats runs after --warmup, minus the cost of one run() of an
Identity model of the same input shape (binding the input, fetching the
output), which a layer inside a network does not pay (floor 1 us;
--no-subtract-overhead keeps it).
"""
#@COMMON@

import onnxruntime as ort

LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def main():
    p = base_parser(__doc__.splitlines()[0], "run_onnx.py")
    p.add_argument("--providers", default="CPUExecutionProvider",
                   help="comma-separated onnxruntime execution providers (default CPUExecutionProvider); "
                        "available here: " + ", ".join(ort.get_available_providers()))
    p.add_argument("--graph-optimization", choices=sorted(LEVELS), default="all",
                   help="onnxruntime graph optimization level (default all, what a deployment uses)")
    p.add_argument("--no-subtract-overhead", dest="subtract", action="store_false",
                   help="keep the per-run() cost in each layer's time")
    a = p.parse_args()
    check_args(a)
    manifest = load_manifest(a.kit)
    providers = [s.strip() for s in a.providers.split(",") if s.strip()]
    missing = [s for s in providers if s not in ort.get_available_providers()]
    if missing:
        fail("execution provider(s) %s not available in this onnxruntime (%s)"
             % (", ".join(missing), ", ".join(ort.get_available_providers())))
    rng = np.random.default_rng(0)
    overheads = {}

    def session(path):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = a.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[a.graph_optimization])
        opts.log_severity_level = 3
        return ort.InferenceSession(path, opts, providers=providers)

    def timed(path):
        sess = session(path)
        feeds = {i.name: random_input([d if isinstance(d, int) else 1 for d in i.shape],
                                      np.float32 if "float" in i.type else np.int8, rng) for i in sess.get_inputs()}
        return median_ms(lambda: sess.run(None, feeds), a.warmup, a.repeats)

    def time_file(entry):
        ms = timed(os.path.join(a.kit, entry["file"]))
        ovh = entry.get("overhead_file")
        if a.subtract and ovh:
            if ovh not in overheads:
                overheads[ovh] = timed(os.path.join(a.kit, ovh))
            ms = max(ms - overheads[ovh], 1e-3)
        return ms

    runtime = "onnxruntime %s %s" % (ort.__version__, "+".join(providers))
    notes = ("graph optimization %s%s" % (a.graph_optimization,
                                          ", per-run overhead subtracted" if a.subtract else ""))
    return measure_kit(a, manifest, time_file, runtime, notes)


if __name__ == "__main__":
    sys.exit(main())
