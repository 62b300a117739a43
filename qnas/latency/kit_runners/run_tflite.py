#!/usr/bin/env python3
"""Time every layer of a qnas latency kit in LiteRT (TFLite) and write KIT/results.csv.

Written by `qnas latency kit --backend tflite`; needs only numpy and the LiteRT
interpreter (`pip install ai-edge-litert`; `tflite-runtime` or TensorFlow's
`tf.lite` are used when it is absent). Run it on the device to measure:

    python run_tflite.py --threads 1                       # CPU (XNNPACK)
    python run_tflite.py --no-xnnpack                      # builtin reference kernels only
    python run_tflite.py --delegate libedgetpu.so.1 --device coral-usb   # a delegate library

then, where qnas is installed: `qnas latency import KIT/results.csv --out table.json`.
On Android phones use run_android.sh (adb + LiteRT's benchmark_model) instead.

Each layer model (int8 in, int8 out, as inside the exported network) is timed
batch 1 with one Interpreter per layer: the median of --repeats invoke() calls
after --warmup, on random int8 inputs.
"""
#@COMMON@

try:
    from ai_edge_litert import interpreter as litert
    RUNTIME = "LiteRT (ai-edge-litert) %s" % getattr(sys.modules.get("ai_edge_litert"), "__version__", "?")
except ImportError:  # older stacks: tflite-runtime, then TensorFlow
    try:
        from tflite_runtime import interpreter as litert
        RUNTIME = "tflite-runtime"
    except ImportError:
        try:
            import tensorflow as tf
        except ImportError:
            fail("no LiteRT interpreter: pip install ai-edge-litert (or tflite-runtime)")

        class litert:  # noqa: N801 - the interpreter API under the names ai-edge-litert uses
            Interpreter = tf.lite.Interpreter
            load_delegate = staticmethod(tf.lite.experimental.load_delegate)
            OpResolverType = tf.lite.experimental.OpResolverType
        RUNTIME = "TensorFlow Lite %s" % tf.__version__


def main():
    p = base_parser(__doc__.splitlines()[0], "run_tflite.py")
    p.add_argument("--no-xnnpack", dest="xnnpack", action="store_false",
                   help="run the builtin kernels without the default XNNPACK delegate")
    p.add_argument("--delegate", metavar="LIB", help="load this delegate library (e.g. libedgetpu.so.1)")
    a = p.parse_args()
    check_args(a)
    manifest = load_manifest(a.kit)
    rng = np.random.default_rng(0)
    delegates = None
    if a.delegate:
        try:
            delegates = [litert.load_delegate(a.delegate)]
        except (ValueError, OSError, RuntimeError) as e:
            fail("cannot load delegate %s (%s)" % (a.delegate, e))

    def time_file(entry):
        kw = {"model_path": os.path.join(a.kit, entry["file"]), "num_threads": a.threads}
        if delegates:
            kw["experimental_delegates"] = delegates
        if not a.xnnpack:
            kw["experimental_op_resolver_type"] = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        it = litert.Interpreter(**kw)
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], random_input(tuple(int(s) for s in d["shape"]), d["dtype"], rng))
        return median_ms(it.invoke, a.warmup, a.repeats)

    runtime = RUNTIME + (" + delegate %s" % os.path.basename(a.delegate) if a.delegate else "") + (
        "" if a.xnnpack else " (builtin kernels, no XNNPACK)")
    return measure_kit(a, manifest, time_file, runtime, "int8 in/out layer models, invoke() timed")


if __name__ == "__main__":
    sys.exit(main())
