"""Latency kits (qnas.latency.kit, `qnas latency kit`): one-layer models + a standalone runner measured on
the user's device, imported back as a table. The onnxruntime and LiteRT runners run here for real; the
adb / trtexec shell runners run against fake tools; the CoreML runner (macOS) is checked as written."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from qnas.cli import main
from qnas.errors import ConfigError, LatencyTableError, UnknownTargetError
from qnas.latency.kit import (BACKENDS, RESULTS_SCHEMA, SCHEMA, import_kit_results, is_kit_results, runner_source,
                              write_kit, written_bits)
from qnas.latency.table import KEY_FIELDS, TableLatencyModel, check_space_coverage, load_table, space_layer_keys
from qnas.space import SearchSpace, SpaceConfig, StageConfig

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
#: what a Python runner may import besides the standard library
RUNTIMES = {"numpy", "onnxruntime", "ai_edge_litert", "tflite_runtime", "tensorflow", "coremltools"}


def small_space(w_bits=(2, 4, 8), a_bits=(4, 8)) -> SearchSpace:
    """One stage of 1-2 blocks at one resolution and width: 34 layer keys with (2,4,8) x (4,8) bits."""
    return SearchSpace(SpaceConfig(resolutions=(8,), widths=(0.5,), stem_channels=8,
                                   stages=(StageConfig(16, (1, 2), 2),), kernels=(3,), expands=(2,),
                                   w_bits=w_bits, a_bits=a_bits))


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=kw.pop("env", ENV),
                          timeout=kw.pop("timeout", 120), **kw)


def check_imports_only_runtimes(source: str) -> None:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    outside = sorted(n for n in names - RUNTIMES if n not in sys.stdlib_module_names)
    assert not outside, f"a runner imports {outside}"


def check_round_trip(kit: Path, space: SearchSpace, table_path: Path, runtime: str) -> None:
    """Import KIT/results.csv with the CLI, then price archs of the space with the table."""
    assert is_kit_results(kit / "results.csv")
    assert main(["latency", "import", str(kit / "results.csv"), "--out", str(table_path)]) == 0
    table = load_table(table_path)
    assert runtime in table.target and table.meta["runtime"].startswith(runtime)
    assert table.meta["threads"] == 1 and table.meta["kit"]["backend"] == json.loads(
        (kit / "manifest.json").read_text())["backend"]
    keys = {l.key() for l in space_layer_keys(space)}
    assert set(table) == keys and all(ms > 0 for ms in table.values())
    model = TableLatencyModel(table)
    cov = check_space_coverage(model, space)
    assert cov is not None and cov.complete and cov.by_entry == len(keys)
    for seed in range(3):
        plan = space.plan(space.sample(seed))
        ms = model.predict(plan)
        assert np.isfinite(ms) and ms == pytest.approx(sum(c.ms for c in model.breakdown(plan)))


# ---- onnx: the whole round trip through the CLI --------------------------------------------------
@pytest.fixture(scope="module")
def onnx_kit(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    space = small_space()
    (d / "space.yaml").write_text(yaml.safe_dump(space.to_dict()))
    assert main(["latency", "kit", "--backend", "onnx", "--space", str(d / "space.yaml"), "--out", str(d / "KIT"),
                 "--no-progress"]) == 0
    return d / "KIT", SearchSpace.from_yaml(d / "space.yaml")


def test_onnx_kit_layout(onnx_kit):
    kit, space = onnx_kit
    man = json.loads((kit / "manifest.json").read_text())
    assert man["schema"] == SCHEMA and man["version"] == 1 and man["backend"] == "onnx"
    assert man["space"] == space.to_dict() and man["target_profile"] is None and man["qnas_version"]
    layers = space_layer_keys(space)
    keys = [l.key() for l in layers]
    assert sorted(tuple(e[f] for f in KEY_FIELDS) for e in man["layers"]) == sorted(keys)
    files = {f["file"]: f for f in man["files"]}
    # onnx stores every weight width as int8: W2/W4/W8 at the same activation bits share a file
    assert len(files) == len({l.key()[:7] + written_bits("onnx", l) for l in layers}) < len(keys)
    for e in man["layers"]:
        f = files[e["file"]]
        assert (kit / e["file"]).is_file() and (kit / f["overhead_file"]).is_file()
        assert e["input_shape"] == f["inputs"][0]["shape"] and e["target"] is None
        assert e["written_bits"] == {"w_bits": f["written"]["w_bits"], "a_bits": f["written"]["a_bits"]}
    pw4 = next(f for f in man["files"] if f["op"] == "pwconv" and f["written"]["a_bits"] == 4)
    assert "Clip [-8, 7]" in pw4["written"]["activations"]
    tsv = (kit / "layers.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["file", *KEY_FIELDS] and len(tsv) == len(keys) + 1
    assert not list(kit.parent.glob(".KIT.*")), "no temporary folder is left behind"
    check_imports_only_runtimes((kit / "run_onnx.py").read_text())


def test_onnx_round_trip(onnx_kit, tmp_path):
    kit, space = onnx_kit
    r = run([sys.executable, kit / "run_onnx.py", "--repeats", "3", "--force"])
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout and "qnas latency import" in r.stdout
    lines = (kit / "results.csv").read_text().splitlines()
    assert lines[0].startswith(f"# {RESULTS_SCHEMA}") and lines[2].startswith("op,cin,cout,hw,k,stride,groups")
    meta = json.loads(lines[1][len("# meta:"):])
    assert meta["kit"]["kit_id"] == json.loads((kit / "manifest.json").read_text())["kit_id"]
    assert meta["kit"]["layers_failed"] == 0 and meta["host"]["cpu"]
    check_round_trip(kit, space, tmp_path / "table.json", "onnxruntime")
    # a second run refuses to overwrite its results without --force
    r = run([sys.executable, kit / "run_onnx.py", "--repeats", "1"])
    assert r.returncode == 2 and "exists" in r.stderr


def test_import_lists_missing_layers_and_checks_the_kit(onnx_kit, tmp_path, capsys):
    kit, space = onnx_kit
    if not (kit / "results.csv").exists():
        assert run([sys.executable, kit / "run_onnx.py", "--repeats", "1"]).returncode == 0
    lines = (kit / "results.csv").read_text().splitlines()
    dropped = next(l for l in lines if l.startswith("dwconv")).split(",")[-1]
    part = kit / "partial.csv"
    part.write_text("\n".join([l for l in lines if not l.endswith(dropped)]
                              + [f"# failed: {dropped}: RuntimeError: no kernel"]) + "\n")
    with pytest.raises(LatencyTableError, match=r"no time for \d+ of the \d+ layer keys.*" + dropped
                       + ".*failed on the device: RuntimeError: no kernel"):
        import_kit_results(part)
    assert main(["latency", "import", str(part), "--out", str(tmp_path / "t.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and dropped in err and not (tmp_path / "t.json").exists()
    # results of another kit next to this manifest are refused
    other = kit / "other.csv"
    other.write_text("\n".join(l.replace('"kit_id": "', '"kit_id": "x') for l in lines) + "\n")
    with pytest.raises(LatencyTableError, match="another kit"):
        import_kit_results(other)
    # without a manifest next to it the CSV still imports (coverage unchecked), --device names the target
    alone = tmp_path / "results.csv"
    alone.write_text("\n".join(lines) + "\n")
    res = import_kit_results(alone, device="my-phone")
    assert res.table.target == "my-phone" and any("not checked" in n for n in res.notes)
    # an ordinary CSV is not taken for kit results: it still needs --format
    plain = tmp_path / "plain.csv"
    plain.write_text("op,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms\nfc,8,10,1,1,1,1,8,8,0.1\n")
    assert not is_kit_results(plain)
    assert main(["latency", "import", str(plain), "--out", str(tmp_path / "p.json")]) == 2
    assert "--format" in capsys.readouterr().err


def test_refusals(onnx_kit, tmp_path, capsys):
    kit, _ = onnx_kit
    before = sorted(p.name for p in kit.iterdir())
    with pytest.raises(ConfigError, match="not empty.*--force"):
        write_kit("onnx", small_space(), kit)
    assert main(["latency", "kit", "--backend", "onnx", "--out", str(kit)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not empty" in err
    assert sorted(p.name for p in kit.iterdir()) == before
    with pytest.raises(ConfigError, match="unknown kit backend 'tvm'.*onnx, tflite, coreml, tensorrt"):
        write_kit("tvm", small_space(), tmp_path / "k")
    assert main(["latency", "kit", "--backend", "tvm", "--out", str(tmp_path / "k")]) == 2
    assert "unknown kit backend" in capsys.readouterr().err and not (tmp_path / "k").exists()
    with pytest.raises(UnknownTargetError, match="unknown latency target 'nope'"):
        write_kit("onnx", small_space(), tmp_path / "k", target_profile="nope")
    assert not (tmp_path / "k").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        write_kit("onnx", small_space(), tmp_path / "file")
    # an empty folder is used; --force replaces a kit (atomically: a new kit id, nothing left over)
    (tmp_path / "empty").mkdir()
    first = write_kit("onnx", small_space(a_bits=(8,)), tmp_path / "empty", progress=False)
    old_id = json.loads((tmp_path / "empty" / "manifest.json").read_text())["kit_id"]
    second = write_kit("onnx", small_space(a_bits=(8,)), tmp_path / "empty", overwrite=True, progress=False)
    assert json.loads((tmp_path / "empty" / "manifest.json").read_text())["kit_id"] != old_id
    assert first.n_files == second.n_files and sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file"]


# ---- tflite: LiteRT runner here, benchmark_model over a fake adb ---------------------------------
@pytest.fixture(scope="module")
def tflite_kit(tmp_path_factory):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    space = small_space()
    kit = tmp_path_factory.mktemp("tflite") / "KIT"
    res = write_kit("tflite", space, kit, progress=False)
    assert res.target_profile == "edgetpu" and res.runners == ("run_tflite.py", "run_android.sh")
    return kit, space


def test_tflite_kit_files(tflite_kit):
    from qnas.exporters.tflite_litert import interpreter, ops_of

    kit, space = tflite_kit
    man = json.loads((kit / "manifest.json").read_text())
    assert man["target_profile"] == "edgetpu"
    for e in man["layers"]:  # the Edge TPU's precision map: sub-8-bit widths run upcast to int8
        t = e["target"]
        assert t["profile"] == "edgetpu" and (t["w_bits"], t["a_bits"]) == (8, 8)
        assert t["how"] == ("native" if (e["w_bits"], e["a_bits"]) == (8, 8) or e["op"] in ("add", "pool") else "upcast")
    dw4 = next(f for f in man["files"] if f["op"] == "dwconv" and f["written"]["a_bits"] == 4)
    ops = [o.op for o in ops_of(interpreter(kit / dw4["file"], delegates=False))]
    # int8 in and out, no QUANTIZE/DEQUANTIZE/TRANSPOSE; the 4-bit input clamped as the exporter does
    assert "DEPTHWISE_CONV_2D" in ops and {"MINIMUM", "MAXIMUM"} <= set(ops)
    assert not {"QUANTIZE", "DEQUANTIZE", "TRANSPOSE"} & set(ops)
    assert all(i["dtype"] == "int8" for f in man["files"] for i in f["inputs"])
    check_imports_only_runtimes((kit / "run_tflite.py").read_text())


def test_tflite_round_trip(tflite_kit, tmp_path):
    kit, space = tflite_kit
    r = run([sys.executable, kit / "run_tflite.py", "--repeats", "3", "--force"])
    assert r.returncode == 0, r.stderr
    check_round_trip(kit, space, tmp_path / "table.csv", "LiteRT")


FAKE_ADB = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
[ "$1" = "-s" ] && shift 2
case "$1" in
  push) exit 0 ;;
  shell) shift
    case "$1" in
      test*|mkdir|rm) exit 0 ;;
      getprop) case "$2" in ro.product.model) echo "Pixel Fake";; ro.soc.model) echo "FakeSoC";; *) echo "14";; esac ;;
      *) for a in "$@"; do case "$a" in --graph=*) g="${a#--graph=}";; esac; done
         case "$g" in *fc_*) echo "ERROR: Failed to apply delegate"; exit 1;; esac
         echo "count=1 first=900 curr=900 min=900 max=900 avg=900 std=0"
         printf 'count=50 first=1200 curr=1100 min=1000 max=1300 avg=1234.5 std=20\r\n'
         echo "Inference timings in us: Init: 100, First inference: 900, Warmup (avg): 900, Inference (avg): 1234.5" ;;
    esac ;;
esac
"""


def test_android_runner_with_fake_adb(tflite_kit, tmp_path):
    kit, _ = tflite_kit
    fake = tmp_path / "adb"
    fake.write_text(FAKE_ADB)
    fake.chmod(0o755)
    out = tmp_path / "android.csv"
    env = {**ENV, "ADB": str(fake), "FAKE_LOG": str(tmp_path / "log")}
    r = run(["bash", kit / "run_android.sh", "--threads", "2", "--runs", "30", "--warmup", "3", "--serial", "X1",
             "--out", out, "--", "--use_xnnpack=true"], env=env)
    assert r.returncode == 1 and "fc_" in r.stderr  # the fake benchmark_model fails on the classifier
    log = (tmp_path / "log").read_text()
    assert "--num_threads=2 --num_runs=30 --warmup_runs=3 --min_secs=0 --warmup_min_secs=0 --use_xnnpack=true" in log
    assert "-s X1 shell /data/local/tmp/benchmark_model --graph=/data/local/tmp/qnas_kit/" in log
    text = out.read_text()
    assert "# failed: layers/fc_" in text and "Failed to apply delegate" in text
    rows = [l.split(",") for l in text.splitlines() if l and not l.startswith(("#", "op,"))]
    assert rows and all(r[9] == "1.2345" for r in rows)  # the last avg= (us) in ms
    meta = json.loads(text.splitlines()[1][len("# meta:"):])
    assert meta["device"].startswith("Pixel Fake (FakeSoC)") and meta["kit"]["runner"] == "run_android.sh"
    # the kit's manifest lists the classifier: import refuses and names it
    with pytest.raises(LatencyTableError, match=r"layers/fc_.*failed on the device: ERROR: Failed to apply"):
        import_kit_results(out, manifest=kit / "manifest.json")
    assert import_kit_results(out).table.target.startswith("Pixel Fake")  # no manifest next to it


# ---- tensorrt and coreml: written and checked here, measured elsewhere ---------------------------
FAKE_TRTEXEC = r"""#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec $*"
echo "[11/30/2026-10:00:00] [I] TensorRT version: 10.3.0"
echo "[11/30/2026-10:00:01] [I] GPU Compute Time: min = 0.0101 ms, max = 0.0302 ms, mean = 0.0211 ms, median = 0.0205 ms, percentile(90%) = 0.025 ms"
"""


def test_tensorrt_kit_and_trtexec_runner(tmp_path):
    from qnas.exporters.conformance import check_tensorrt_qdq

    space = small_space()
    kit = tmp_path / "KIT"
    res = write_kit("tensorrt", space, kit, progress=False)
    assert res.runners == ("run_trtexec.sh",) and res.target_profile == "tensorrt-orin"
    man = json.loads((kit / "manifest.json").read_text())
    for f in man["files"]:
        assert f["file"].endswith(".onnx") and check_tensorrt_qdq(kit / f["file"]) == []
    a4 = next(f for f in man["files"] if f["op"] == "pwconv" and f["written"]["a_bits"] == 4)
    assert a4["written"]["activations"].startswith("float Clip")
    sh = (kit / "run_trtexec.sh").read_text()
    assert "--int8 --fp16" in sh and "GPU Compute Time" in sh and "median" in sh
    assert run(["bash", "-n", kit / "run_trtexec.sh"]).returncode == 0
    fake = tmp_path / "trtexec"
    fake.write_text(FAKE_TRTEXEC)
    fake.chmod(0o755)
    env = {**ENV, "TRTEXEC": str(fake), "FAKE_LOG": str(tmp_path / "log")}
    r = run(["bash", kit / "run_trtexec.sh", "--iterations", "50", "--device", "jetson-fake"], env=env)
    assert r.returncode == 0, r.stderr
    assert f"--onnx={kit}/layers/" in (tmp_path / "log").read_text()
    assert "--int8 --fp16 --warmUp=200 --iterations=50 --duration=0" in (tmp_path / "log").read_text()
    out = tmp_path / "trt.json"
    assert main(["latency", "import", str(kit / "results.csv"), "--out", str(out)]) == 0
    table = load_table(out)
    assert table.target == "jetson-fake" and "TensorRT 10.3.0" in table.meta["runtime"]
    assert set(table.values()) == {0.0205} and len(table) == len(space_layer_keys(space))


FAKE_COREMLTOOLS = """
import os
__version__ = "0.fake"
class ComputeUnit:
    ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE = "ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"
class _MLModel:
    def __init__(self, path, compute_units=None):
        assert os.path.isdir(path) and path.endswith(".mlpackage") and compute_units == "CPU_AND_NE"
    def predict(self, feeds):
        assert set(feeds) <= {"input", "residual", "gate"} and all(v.dtype.name == "float32" for v in feeds.values())
        return {}
class models:
    MLModel = _MLModel
"""


def test_coreml_kit_written(tmp_path):
    pytest.importorskip("coremltools")
    space = SearchSpace(SpaceConfig(resolutions=(8,), widths=(0.5,), stem_channels=8, stages=(StageConfig(16, (1,), 2),),
                                    kernels=(3,), expands=(2,), w_bits=(2, 4), a_bits=(8,)))
    kit = tmp_path / "KIT"
    res = write_kit("coreml", space, kit, progress=False)
    man = json.loads((kit / "manifest.json").read_text())
    assert res.target_profile == "coreml-ane" and man["runners"] == ["run_coreml.py"]
    storage = {f["written"]["w_bits"]: f["written"]["weights"] for f in man["files"] if f["op"] != "pool"}
    assert set(storage) == {2, 4, 8} and "LUT" in storage[2] and "int4" in storage[4] and "int8" in storage[8]
    for f in man["files"]:
        assert (kit / f["file"]).is_dir() and (kit / f["file"] / "Manifest.json").is_file()  # .mlpackage
        assert f["inputs"][0]["name"] == "input" and f["inputs"][0]["dtype"] == "float32"
    py = (kit / "run_coreml.py").read_text()
    assert "#@COMMON@" not in py and "def measure_kit" in py and "MLModel" in py and "darwin" in py
    check_imports_only_runtimes(py)
    # no CoreML runtime here: run the runner's own logic against a stand-in coremltools, as if on macOS
    fake = tmp_path / "fake" / "coremltools"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_COREMLTOOLS)
    code = ("import runpy, sys; sys.platform = 'darwin'; "
            f"sys.argv = ['run_coreml.py', '--repeats', '2', '--compute-units', 'CPU_AND_NE']; "
            f"runpy.run_path({str(kit / 'run_coreml.py')!r}, run_name='__main__')")
    r = run([sys.executable, "-c", code], env={**ENV, "PYTHONPATH": str(fake.parent)})
    assert r.returncode == 0, r.stderr
    out = tmp_path / "coreml.json"
    assert main(["latency", "import", str(kit / "results.csv"), "--out", str(out)]) == 0
    assert "CPU_AND_NE" in load_table(out).meta["runtime"]


def test_runner_sources():
    for backend in BACKENDS:
        for name in {"onnx": ["run_onnx.py"], "tflite": ["run_tflite.py", "run_android.sh"],
                     "coreml": ["run_coreml.py"], "tensorrt": ["run_trtexec.sh"]}[backend]:
            text = runner_source(name)
            if name.endswith(".sh"):
                assert subprocess.run(["bash", "-n", "-c", text]).returncode == 0
            else:
                compile(text, name, "exec")
                check_imports_only_runtimes(text)
    android = runner_source("run_android.sh")
    for flag in ("--graph=", "--num_threads=", "--num_runs=", "--warmup_runs=", "avg="):
        assert flag in android


def test_written_bits():
    from qnas.quant.plan import LayerSpec

    pw = LayerSpec("s0.b0.expand", "pwconv", 8, 16, 4, 4, w_bits=2, a_bits=4)
    assert written_bits("onnx", pw) == written_bits("tflite", pw) == written_bits("tensorrt", pw) == (8, 4)
    assert written_bits("coreml", pw) == (2, 4)
    add = LayerSpec("s0.b1.add", "add", 8, 8, 2, 2, w_bits=4, a_bits=4)
    assert written_bits("tflite", add) == (8, 8) and written_bits("onnx", add) == (32, 32)


def test_squeeze_excite_mul_layer_is_written_by_every_backend(tmp_path):
    """The SE gate product (op ``mul``, mobile presets): two inputs, the gate one value per channel."""
    import onnxruntime as ort

    from qnas.latency.kit import _WRITERS
    from qnas.quant.plan import LayerSpec

    mul = LayerSpec("s1.b0.se.mul", "mul", 24, 24, 7, 7, w_bits=8, a_bits=8)
    for backend in ("onnx", "tensorrt"):
        inputs = _WRITERS[backend](mul, tmp_path / f"{backend}.onnx")
        assert [(i["name"], i["shape"]) for i in inputs] == [("input", [1, 24, 7, 7]), ("gate", [1, 24, 1, 1])]
        sess = ort.InferenceSession(str(tmp_path / f"{backend}.onnx"), providers=["CPUExecutionProvider"])
        out = sess.run(None, {"input": np.ones((1, 24, 7, 7), np.float32), "gate": np.ones((1, 24, 1, 1), np.float32)})
        assert out[0].shape == (1, 24, 7, 7)
    pytest.importorskip("coremltools")
    inputs = _WRITERS["coreml"](mul, tmp_path / "mul.mlpackage")
    assert [i["shape"] for i in inputs] == [[1, 24, 7, 7], [1, 24, 1, 1]]
    pytest.importorskip("litert_torch")
    inputs = _WRITERS["tflite"](mul, tmp_path / "mul.tflite")
    assert sorted(i["shape"] for i in inputs) == [[1, 1, 1, 24], [1, 7, 7, 24]] and {i["dtype"] for i in inputs} == {"int8"}
