"""Hostile inputs for every ``qnas`` command, generated (issue 14, item 6).

A :class:`Case` is an argv with placeholders: ``{name}`` is the path of fixture ``name`` inside the
case's own directory (:data:`FIXTURES` says how it is written; ``{new_*}`` names an output path that
does not exist yet). Every case is bad input that must be refused with exit 2 and one line, before
any work and without writing anything: :mod:`tests.robustness.sweep` runs them and checks that.

Categories: ``numbers`` (each numeric option of each command given NaN, inf, negative, zero where
zero is invalid, 2**70, text, nothing), ``files`` (missing, a directory, binary garbage, empty,
truncated / deeply nested / wrongly typed JSON, unknown keys, pickles and torch checkpoints carrying
objects that must never be unpickled, non-UTF-8 or deeply nested YAML, YAML with bad values), ``data``
(npz data and calibration files of the wrong shape, object arrays, huge labels, NaN pixels, image
folders that cannot be used), ``outputs`` (under a regular file, an existing user file without
``--force``, a non-empty run directory), ``names`` (unknown target, torch device, strategy, backend,
accuracy source ...), ``resume`` (runs whose config or history was damaged) and ``misc`` (bad JSON
options, flags that contradict each other).
"""
from __future__ import annotations

import functools
import io
import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["Case", "ENTRY_POINT_SAMPLE", "FIXTURES", "NEW", "USER_FILE", "all_cases", "materialize"]

HUGE = str(2**70)


@dataclass(frozen=True)
class Case:
    """One hostile command line. ``argv`` holds ``{fixture}`` placeholders (see :func:`materialize`)."""

    id: str
    category: str
    argv: tuple[str, ...]

    def fixture_names(self) -> list[str]:
        names: list[str] = []
        for a in self.argv:
            for n in _PLACEHOLDER.findall(a):
                if n not in names:
                    names.append(n)
        return names


_PLACEHOLDER = re.compile(r"\{(\w+)\}")

#: every case directory holds this user file (it must come out byte-identical)
USER_FILE = "keep.txt"

#: output paths a case names but that must not exist afterwards
NEW = {"new_run": "run", "new_sn": "sn", "new_pt": "out.pt", "new_onnx": "out.onnx", "new_mlpackage": "out.mlpackage",
       "new_tflite": "out.tflite", "new_npz": "calib.npz", "new_json": "out.json", "new_table": "table.json",
       "new_hybrid": "hybrid.json", "new_report": "report.json"}


# ---- fixture writers --------------------------------------------------------------------------
class _Pwn:
    """Unpickling this creates the directory PWNED next to the file: proof that a pickle ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _marker(p: Path) -> str:
    return str(p.parent / "PWNED")


@functools.lru_cache(maxsize=None)
def _arch_dict() -> dict:
    """A valid arch of the default (digits) space, as JSON data."""
    import numpy as np

    from qnas.space import SearchSpace

    return SearchSpace().sample(np.random.default_rng(0)).to_dict()


@functools.lru_cache(maxsize=None)
def _model_bytes(nan: bool = False) -> bytes:
    """A valid finished model.pt of :func:`_arch_dict` (untrained; with ``nan``: NaN weights)."""
    import tempfile

    import torch

    from qnas.arch import Arch
    from qnas.model_io import save_model
    from qnas.quant.build import build_model
    from qnas.space import SearchSpace

    space = SearchSpace()
    arch = space.validate(Arch.from_dict(_arch_dict()))
    torch.manual_seed(0)
    model = build_model(space, arch)
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    extra = {"data": {"data": "digits", "data_path": None, "split_seed": 0}}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "model.pt"
        save_model(path, model, space, arch, extra=extra)
        return path.read_bytes()


def _torch_save(obj_of_path: Callable[[Path], object]) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        import torch

        torch.save(obj_of_path(p), p)
    return write


def _text(s: str) -> Callable[[Path], None]:
    return lambda p: p.write_text(s, encoding="utf-8")


def _bytes(b: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(b)


def _json(obj: object) -> Callable[[Path], None]:
    return lambda p: p.write_text(json.dumps(obj), encoding="utf-8")


def _arch_with(**changes: object) -> Callable[[Path], None]:
    return lambda p: p.write_text(json.dumps({**_arch_dict(), **changes}), encoding="utf-8")


def _mkdir(p: Path) -> None:
    p.mkdir()


def _npz(**arrays: Callable[[], object]) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        import numpy as np

        with open(p, "wb") as f:  # np.savez would append .npz to a name without it
            np.savez(f, **{k: v() for k, v in arrays.items()})
    return write


def _images(n: int = 40, c: int = 1, r: int = 16, dtype: str = "float32", fill: float | None = None):
    def make():
        import numpy as np

        a = np.random.default_rng(0).random((n, c, r, r)).astype(dtype)
        if fill is not None:
            a.flat[:: max(1, a.size // 7)] = fill
        return a
    return make


def _labels(n: int = 40, classes: int = 10, top: int | None = None, dtype: str = "int64"):
    def make():
        import numpy as np

        a = (np.arange(n) % classes).astype(dtype)
        if top is not None:
            a[0] = top
        return a
    return make


def _object_array():
    import numpy as np

    return np.array([{"a": 1}, None], dtype=object)


def _npz_huge_header(p: Path) -> None:
    """An npz whose ``images`` header claims 10^12 bytes of data that the file does not hold."""
    import numpy as np
    from numpy.lib import format as npformat

    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (1_000_000, 1, 1000, 1000)})
    buf.write(b"\0" * 64)
    labels = io.BytesIO()
    np.save(labels, np.arange(10))
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("images.npy", buf.getvalue())
        z.writestr("labels.npy", labels.getvalue())


def _imagefolder(classes: int = 2, mode: str = "L", corrupt: bool = False) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        from PIL import Image

        for c in range(classes):
            d = p / f"class{c}"
            d.mkdir(parents=True)
            for i in range(6):
                if corrupt and i == 0:
                    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
                    continue
                Image.new(mode, (16, 16), color=(i * 40) if mode == "L" else (i * 40, 10, 200)).save(d / f"{i}.png")
    return write


def _run_dir(config: dict | None = None, *, raw_config: bytes | None = None, history: bytes | None = None,
             history_dir: bool = False, extra: dict[str, bytes] | None = None) -> Callable[[Path], None]:
    """A search run directory with ``config.json`` (the defaults plus ``config``) and a history."""
    def write(p: Path) -> None:
        from qnas.options import SearchConfig

        p.mkdir()
        cfg = {**SearchConfig().to_dict(), **(config or {})}
        (p / "config.json").write_bytes(raw_config if raw_config is not None else json.dumps(cfg).encode())
        if history_dir:
            (p / "history.jsonl").mkdir()
        elif history is not None:
            (p / "history.jsonl").write_bytes(history)
        for name, data in (extra or {}).items():
            (p / name).write_bytes(data)
    return write


def _supernet_dir(content: Callable[[Path], None]) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        p.mkdir()
        content(p / "supernet.pt")
    return write


def _tampered_history(p: Path) -> bytes:
    rec = {"uid": "a0", "arch": {**_arch_dict(), "resolution": 99}, "val_acc": 0.5, "latency_ms": 1.0, "size_kb": 1.0}
    return (json.dumps(rec) + "\n").encode()


DEEP_JSON = "[" * 10_000 + "]" * 10_000
DEEP_JSON_OBJ = '{"a": ' * 10_000 + "1" + "}" * 10_000
DEEP_YAML = "resolutions: " + "[" * 10_000 + "]" * 10_000 + "\n"
GARBAGE = bytes(range(256)) * 16 + b"\xff\xfe\x00\x80"
YAML_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))

#: fixture name -> (file name in the case directory, writer; None: the path is left absent)
FIXTURES: dict[str, tuple[str, Callable[[Path], None] | None]] = {
    # generic bad files
    "missing": ("missing.json", None),
    "missing_pt": ("missing.pt", None),
    "missing_npz": ("missing.npz", None),
    "missing_yaml": ("missing.yaml", None),
    "dir": ("somedir", _mkdir),
    "garbage": ("garbage.bin", _bytes(GARBAGE)),
    "garbage_pt": ("garbage.pt", _bytes(GARBAGE)),
    "garbage_npz": ("garbage.npz", _bytes(GARBAGE)),
    "garbage_json": ("garbage.json", _bytes(GARBAGE)),
    "zip_pt": ("notorch.pt", lambda p: zipfile.ZipFile(p, "w").writestr("x.txt", "not a torch archive")),
    "empty": ("empty.json", _bytes(b"")),
    "empty_pt": ("empty.pt", _bytes(b"")),
    "empty_npz": ("empty.npz", _bytes(b"")),
    "trunc_json": ("trunc.json", _text('{"resolution": 16, "width": 0.5, "stages": [[{"kernel": ')),
    "deep_json": ("deep.json", _text(DEEP_JSON)),
    "deep_obj_json": ("deepobj.json", _text(DEEP_JSON_OBJ)),
    "json_list": ("list.json", _json([1, 2, 3])),
    "json_string": ("string.json", _json("an arch")),
    "json_wrong_types": ("types.json", _json({"resolution": "big", "width": [], "stages": 5})),
    "json_nonutf8": ("latin1.json", _bytes('{"resolution": 16, "name": "caf\xe9"}'.encode("latin-1"))),
    # pickles that must never run
    "pickle": ("evil.pkl", lambda p: p.write_bytes(pickle.dumps(_Pwn(_marker(p))))),
    "pickle_pt": ("evilpickle.pt", lambda p: p.write_bytes(pickle.dumps(_Pwn(_marker(p))))),
    "torch_evil": ("evil.pt", _torch_save(lambda p: {"format": "qnas-checkpoint", "version": 1, "meta_json": "{}",
                                                     "state_dict": {}, "payload": _Pwn(_marker(p))})),
    "torch_evil_pth": ("evil.pth", _torch_save(lambda p: {"state_dict": {}, "payload": _Pwn(_marker(p))})),
    "torch_tensor": ("tensor.pt", _torch_save(lambda p: __import__("torch").zeros(3))),
    "torch_nometa": ("nometa.pt", _torch_save(lambda p: {"weight": __import__("torch").zeros(3)})),
    "torch_noarch": ("noarch.pt", _torch_save(lambda p: {"format": "qnas-checkpoint", "version": 1,
                                                         "meta_json": "{}", "state_dict": {}})),
    "torch_badmeta": ("badmeta.pt", _torch_save(lambda p: {"format": "qnas-checkpoint", "version": 1,
                                                           "meta_json": "{not json", "state_dict": {}})),
    "torch_version": ("v99.pt", _torch_save(lambda p: {"format": "qnas-checkpoint", "version": 99,
                                                       "meta_json": "{}", "state_dict": {}})),
    "model_nan": ("nan_model.pt", lambda p: p.write_bytes(_model_bytes(nan=True))),
    "model": ("model.pt", lambda p: p.write_bytes(_model_bytes())),
    # arch JSON
    "arch": ("arch.json", lambda p: p.write_text(json.dumps(_arch_dict()))),
    "arch_unknown_key": ("arch_key.json", _arch_with(resolutoin=16)),
    "arch_res_huge": ("arch_res.json", _arch_with(resolution=100000)),
    "arch_res_nan": ("arch_nan.json", lambda p: p.write_text(json.dumps({**_arch_dict(), "resolution": float("nan")}))),
    "arch_width_neg": ("arch_width.json", _arch_with(width=-1.0)),
    "arch_stages_str": ("arch_stages.json", _arch_with(stages="none")),
    "arch_no_stages": ("arch_nostages.json", lambda p: p.write_text(json.dumps(
        {k: v for k, v in _arch_dict().items() if k != "stages"}))),
    # YAML search spaces
    "yaml_nonutf8": ("latin1.yaml", _bytes(b"w_bits: [8]\nname: caf\xe9\xff\xfe\n")),
    "yaml_deep": ("deep.yaml", _text(DEEP_YAML)),
    "yaml_bomb": ("bomb.yaml", _text(YAML_BOMB)),
    "yaml_syntax": ("syntax.yaml", _text("stages: [\n")),
    "yaml_list": ("list.yaml", _text("- 1\n- 2\n")),
    "yaml_string": ("string.yaml", _text("just a sentence\n")),
    "yaml_bits3": ("bits3.yaml", _text("a_bits: [3, 8]\n")),  # activations: 4-8 bits only
    "yaml_abits": ("abits.yaml", _text("a_bits: [1]\n")),
    "yaml_res_huge": ("res.yaml", _text("resolutions: [100000]\n")),
    "yaml_res_neg": ("resneg.yaml", _text("resolutions: [-16]\n")),
    "yaml_res_str": ("resstr.yaml", _text("resolutions: sixteen\n")),
    "yaml_width_nan": ("widthnan.yaml", _text("widths: [.nan]\n")),
    "yaml_width_inf": ("widthinf.yaml", _text("widths: [.inf]\n")),
    "yaml_classes": ("classes.yaml", _text("num_classes: 100000000000\n")),
    "yaml_channels": ("channels.yaml", _text("in_channels: 0\n")),
    "yaml_unknown": ("unknown.yaml", _text("resolutoins: [16]\n")),
    "yaml_stage_bad": ("stage.yaml", _text("stages:\n  - {channels: -8, kernels: [4], expansions: [0]}\n")),
    "yaml_stages_huge": ("stages.yaml", _text("stages:\n" + "  - {channels: 100000000, depths: [1000000]}\n")),
    "yaml_python_tag": ("tag.yaml", _text("resolutions: !!python/object/apply:os.system ['touch PWNED']\n")),
    # data sets (npz)
    "npz_2d": ("flat.npz", _npz(images=lambda: __import__("numpy").zeros((40, 5), "float32"), labels=_labels())),
    "npz_5d": ("fived.npz", _npz(images=lambda: __import__("numpy").zeros((40, 1, 1, 8, 8), "float32"),
                                  labels=_labels())),
    "npz_object": ("object.npz", _npz(images=_object_array, labels=_labels(2))),
    "npz_object_labels": ("objlabels.npz", _npz(images=_images(2), labels=_object_array)),
    "npz_huge_label": ("hugelabel.npz", _npz(images=_images(), labels=_labels(top=10**12))),
    "npz_neg_label": ("neglabel.npz", _npz(images=_images(), labels=_labels(top=-1))),
    "npz_float_labels": ("floatlabels.npz", _npz(images=_images(), labels=_labels(dtype="float32"))),
    "npz_nan": ("nan.npz", _npz(images=_images(fill=float("nan")), labels=_labels())),
    "npz_inf": ("inf.npz", _npz(images=_images(fill=float("inf")), labels=_labels())),
    "npz_mismatch": ("mismatch.npz", _npz(images=_images(40), labels=_labels(30))),
    "npz_no_labels": ("nolabels.npz", _npz(images=_images())),
    "npz_no_images": ("noimages.npz", _npz(labels=_labels())),
    "npz_zero": ("zero.npz", _npz(images=_images(0), labels=_labels(0))),
    "npz_one_class": ("oneclass.npz", _npz(images=_images(), labels=_labels(classes=1))),
    "npz_uint16": ("uint16.npz", _npz(images=lambda: __import__("numpy").full((40, 1, 16, 16), 1000, "uint16"),
                                      labels=_labels())),
    "npz_strings": ("strings.npz", _npz(images=lambda: __import__("numpy").array(["a", "b"]), labels=_labels(2))),
    "npz_huge_header": ("hugeheader.npz", _npz_huge_header),
    "npz_rgb": ("rgb.npz", _npz(images=_images(c=3), labels=_labels())),
    "npy": ("single.npy", lambda p: __import__("numpy").save(open(p, "wb"), __import__("numpy").zeros(3))),
    # image folders, CIFAR-10 folders
    "folder_empty": ("emptyfolder", _mkdir),
    "folder_one_class": ("oneclass", _imagefolder(classes=1)),
    "folder_corrupt": ("corrupt", _imagefolder(corrupt=True)),
    "folder_rgb": ("rgbfolder", _imagefolder(mode="RGB")),
    "cifar_bad": ("cifar", lambda p: (p.mkdir(), (p / "data_batch_1.bin").write_bytes(GARBAGE[:1000]),
                                      (p / "test_batch.bin").write_bytes(GARBAGE[:1000]))),
    # latency tables, hybrids and profiles
    "table_nan": ("table_nan.json", _text('{"version": 1, "entries": {"x": NaN}}')),
    "csv_garbage": ("table.csv", _text("key,ms\n\"unterminated,\x00,nan\n1,2,3,4\n")),
    "profile_nan": ("profile_nan.json", lambda p: p.write_text(_profile_with(p, nan=True))),
    "profile_unknown": ("profile_key.json", lambda p: p.write_text(_profile_with(p, unknown=True))),
    # run directories (resume and finish)
    "run_empty": ("emptyrun", _mkdir),
    "run_cfg_deep": ("rundeep", _run_dir(raw_config=DEEP_JSON.encode())),
    "run_cfg_garbage": ("rungarbage", _run_dir(raw_config=GARBAGE)),
    "run_cfg_list": ("runlist", _run_dir(raw_config=b"[1, 2]")),
    "run_cfg_trunc": ("runtrunc", _run_dir(raw_config=b'{"data": "digits", "seed"')),
    "run_cfg_seed_str": ("runseed", _run_dir({"seed": "zero"})),
    "run_cfg_seed_huge": ("runseedhuge", _run_dir({"seed": 2**70})),
    "run_cfg_epochs_neg": ("runepochs", _run_dir({"epochs": -1})),
    "run_cfg_candidates_huge": ("runcand", _run_dir({"n_candidates": 2**70})),
    "run_cfg_batch_zero": ("runbatch", _run_dir({"batch_size": 0})),
    "run_cfg_budget_nan": ("runbudget", _run_dir(raw_config=None, config={"latency_budget_ms": float("nan")})),
    "run_cfg_unknown": ("rununknown", _run_dir({"nosuch": 1})),
    "run_cfg_target": ("runtarget", _run_dir({"target": "nosuch"})),
    "run_cfg_strategy": ("runstrategy", _run_dir({"strategy": "nosuch"})),
    "run_cfg_space_bad": ("runspace", _run_dir({"space": {"w_bits": [9]}})),
    "run_cfg_data": ("rundata", _run_dir({"data": "nosuch"})),
    "run_history_binary": ("runhistbin", _run_dir(history=GARBAGE)),
    "run_history_dir": ("runhistdir", _run_dir(history_dir=True)),
    "run_history_tampered": ("runtampered", lambda p: _run_dir(history=_tampered_history(p))(p)),
    "run_history_json_list": ("runhistlist", _run_dir(history=b"[1, 2, 3]\n")),
    "run_arch_garbage": ("runarch", _run_dir(extra={"arch.json": GARBAGE})),
    "run_arch_deep": ("runarchdeep", _run_dir(extra={"arch.json": DEEP_JSON.encode()})),
    "run_front_garbage": ("runfront", _run_dir(extra={"front.json": GARBAGE})),
    "run_front_empty": ("runfrontempty", _run_dir(extra={"front.json": b"[]"})),
    "run_model_evil": ("runmodel", lambda p: (_run_dir()(p), _torch_save(
        lambda q: {"format": "qnas-checkpoint", "version": 1, "meta_json": "{}", "state_dict": {},
                   "x": _Pwn(_marker(q))})(p / "model.pt"))),
    # supernet directories
    "sn_garbage": ("sngarbage", _supernet_dir(_bytes(GARBAGE))),
    "sn_evil": ("snevil", _supernet_dir(lambda p: _torch_save(lambda q: {"x": _Pwn(_marker(q))})(p))),
    "sn_empty_file": ("snempty", _supernet_dir(_bytes(b""))),
    # user files and directories
    "userfile": ("mine.txt", _text("mine\n")),
    "user_onnx": ("mine.onnx", _bytes(b"my model")),
    "user_npz": ("mine.npz", _bytes(b"my calibration")),
    "user_json": ("mine.json", _text('{"mine": true}')),
    "user_pt": ("mine.pt", _bytes(b"my checkpoint")),
    "user_dir": ("mydir", lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine"))),
    "sn_out_file": ("snfile", _text("not a directory")),
}
for _name, _file in NEW.items():
    FIXTURES[_name] = (_file, None)


def _profile_with(p: Path, nan: bool = False, unknown: bool = False) -> str:
    from qnas.latency.profile import PROFILES_DIR

    d = json.loads((PROFILES_DIR / "cpu-ort.json").read_text())
    if nan:
        _set_first_number(d, float("nan"))
    if unknown:
        d["nosuch_key"] = 1
    return json.dumps(d)


def _set_first_number(d: dict, value: float) -> bool:
    """Replace the first positive number found (depth first) in ``d`` by ``value``."""
    for k, v in d.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            d[k] = value
            return True
        if isinstance(v, dict) and _set_first_number(v, value):
            return True
    return False


def materialize(case: Case, root: Path) -> list[str]:
    """Write the fixtures ``case`` names into ``root`` (plus the user file); the argv with real paths."""
    (root / USER_FILE).write_text("my notes, not to be touched\n")
    paths: dict[str, str] = {}
    for name in case.fixture_names():
        file, writer = FIXTURES[name]
        path = root / file
        if writer is not None and not path.exists() and not path.is_symlink():
            writer(path)
        paths[name] = str(path)
    return [_PLACEHOLDER.sub(lambda m: paths[m.group(1)], a) for a in case.argv]


# ---- the cases --------------------------------------------------------------------------------
#: valid command lines each bad option is added to (so the option is the only thing wrong)
BASE: dict[str, tuple[str, ...]] = {
    "search": ("search", "--out", "{new_run}", "--no-progress"),
    "demo": ("demo", "--out", "{new_run}", "--no-progress"),
    "supernet-train": ("supernet", "train", "--out", "{new_sn}", "--no-progress"),
    "finish-qat": ("finish", "qat", "{arch}", "--out", "{new_pt}", "--no-progress"),
    "finish-ptq": ("finish", "ptq", "{arch}", "--out", "{new_pt}", "--no-progress"),
    "export-onnx": ("export", "onnx", "{model}", "--out", "{new_onnx}"),
    "export-tensorrt": ("export", "tensorrt", "{model}", "--out", "{new_onnx}"),
    "export-coreml": ("export", "coreml", "{model}", "--out", "{new_mlpackage}"),
    "export-tflite": ("export", "tflite", "{model}", "--out", "{new_tflite}"),
    "latency-predict": ("latency", "predict", "{arch}"),
    "latency-measure": ("latency", "measure", "--out", "{new_table}", "--no-progress"),
    "latency-eval": ("latency", "eval", "--out", "{new_json}", "--no-progress"),
    "calib-build": ("calib", "build", "--from", "digits", "--out", "{new_npz}"),
    "diagnose-clipping": ("diagnose", "clipping", "{model}", "--json", "{new_json}"),
}

# value kinds of numeric options: the values each must refuse
_INT_TEXT = ["nan", "inf", "abc", "", "1.5", HUGE]
BAD_VALUES: dict[str, list[str]] = {
    "pos_int": _INT_TEXT + ["0", "-1"],
    "nonneg_int": _INT_TEXT + ["-1"],
    "batch": _INT_TEXT + ["0", "-1", "1"],  # a batch of one image cannot train batch norm
    "seed": _INT_TEXT + ["-1", str(2**32)],
    "pos_float": ["nan", "inf", "-inf", "-1", "0", "abc", "", "1e400"],
    "fraction": ["nan", "-0.1", "1.5", "inf", "abc", ""],
    "pos_finite": ["nan", "inf", "-1", "0", "abc", ""],
    "unit_interval": ["nan", "-0.5", "2", "abc"],
    "resolution": ["0", "7", "100000", "-16", "nan", HUGE],
    "opset": ["0", "-1", "1", "1000", "abc", HUGE],
}

#: (command, flag, kind, extra valid flags the option needs)
NUMERIC: list[tuple[str, str, str, tuple[str, ...]]] = [
    *[("search", f, k, ()) for f, k in [("--seed", "seed"), ("--batch-size", "batch"), ("--refine-top", "nonneg_int"),
                                        ("--refine-epochs", "pos_int"), ("--candidates", "pos_int"),
                                        ("--batch", "pos_int"), ("--epochs", "pos_int"), ("--budget-ms", "pos_float"),
                                        ("--size-kb", "pos_float"), ("--memory-kb", "pos_float"),
                                        ("--supernet-epochs", "nonneg_int")]],
    ("search", "--ray-gpus-per-task", "nonneg_finite_ray", ("--executor", "ray")),
    ("search", "--ray-cpus-per-task", "pos_float", ("--executor", "ray")),
    *[("demo", f, k, ()) for f, k in [("--seed", "seed"), ("--batch-size", "batch"), ("--refine-top", "nonneg_int"),
                                      ("--refine-epochs", "pos_int"), ("--supernet-epochs", "nonneg_int"),
                                      ("--candidates", "pos_int"), ("--search-epochs", "pos_int"),
                                      ("--finish-epochs", "nonneg_int"), ("--budget-ms", "pos_float")]],
    *[("supernet-train", f, k, ()) for f, k in [("--epochs", "pos_int"), ("--batch-size", "batch"),
                                                ("--seed", "seed")]],
    *[(c, f, k, ()) for c in ("finish-qat", "finish-ptq")
      for f, k in [("--seed", "seed"), ("--batch-size", "batch"), ("--float-epochs", "nonneg_int")]],
    *[("finish-qat", f, k, ()) for f, k in [("--epochs", "nonneg_int"), ("--lr", "pos_finite"),
                                            ("--kd-weight", "unit_interval"), ("--kd-temperature", "pos_finite"),
                                            ("--early-stop", "pos_int")]],
    *[(f"export-{b}", f, "fraction", ()) for b in ("onnx", "tensorrt", "coreml", "tflite")
      for f in ("--min-agreement", "--min-within-step")],
    *[(f"export-{b}", "--opset", "opset", ()) for b in ("onnx", "tensorrt")],
    *[("latency-measure", f, k, ()) for f, k in [("--archs", "nonneg_int"), ("--seed", "seed"),
                                                 ("--threads", "pos_int"), ("--warmup", "nonneg_int"),
                                                 ("--repeats", "pos_int"), ("--passes", "pos_int")]],
    *[("latency-eval", f, k, ()) for f, k in [("--n", "pos_int"), ("--seed", "seed"), ("--passes", "pos_int")]],
    ("latency-eval", "--n-fit", "pos_int", ("--save-hybrid", "{new_hybrid}")),
    *[("calib-build", f, k, ()) for f, k in [("--n", "pos_int"), ("--resolution", "resolution"), ("--seed", "seed"),
                                             ("--split-seed", "seed"), ("--min-per-class", "nonneg_int")]],
    *[("diagnose-clipping", f, k, ()) for f, k in [("--batches", "pos_int"), ("--batch-size", "pos_int"),
                                                   ("--max-logits", "pos_float")]],
]
BAD_VALUES["nonneg_finite_ray"] = ["nan", "inf", "-1", "abc", ""]


def _slug(v: str) -> str:
    return {"": "empty", HUGE: "2e70", str(2**32): "2e32", "1e400": "1e400"}.get(v, v.replace(".", "_"))


def number_cases() -> list[Case]:
    cases = []
    for cmd, flag, kind, extra in NUMERIC:
        for v in BAD_VALUES[kind]:
            cases.append(Case(f"numbers/{cmd}/{flag.lstrip('-')}={_slug(v)}", "numbers",
                              BASE[cmd] + extra + (f"{flag}={v}",)))
    return cases


# file slots: (id, argv with {F} where the bad file goes, fixture names to try)
ARCH_BAD = ["missing", "dir", "garbage_json", "empty", "trunc_json", "deep_json", "deep_obj_json", "json_list",
            "json_string", "json_wrong_types", "json_nonutf8", "arch_unknown_key", "arch_res_huge", "arch_res_nan",
            "arch_width_neg", "arch_stages_str", "arch_no_stages", "pickle", "garbage_pt", "pickle_pt", "torch_evil",
            "torch_noarch", "torch_badmeta", "run_arch_garbage", "run_arch_deep", "run_front_garbage",
            "run_front_empty", "run_model_evil", "run_cfg_deep", "run_cfg_list"]
MODEL_BAD = ["missing_pt", "dir", "garbage_pt", "empty_pt", "zip_pt", "pickle_pt", "torch_evil", "torch_tensor",
             "torch_nometa", "torch_noarch", "torch_badmeta", "torch_version", "arch", "run_model_evil"]
STATE_DICT_BAD = ["missing_pt", "dir", "garbage_pt", "empty_pt", "pickle_pt", "torch_evil_pth", "torch_tensor",
                  "json_list"]
PREDICTOR_BAD = ["missing", "dir", "garbage", "garbage_pt", "empty", "pickle", "pickle_pt", "torch_evil", "json_list",
                 "deep_json", "trunc_json", "json_wrong_types"]
SUPERNET_BAD = ["missing_pt", "dir", "garbage_pt", "pickle_pt", "torch_evil", "torch_tensor", "sn_garbage", "sn_evil",
                "sn_empty_file", "model"]
YAML_BAD = ["missing_yaml", "dir", "garbage", "yaml_nonutf8", "yaml_deep", "yaml_bomb", "yaml_syntax", "yaml_list",
            "yaml_string", "yaml_bits3", "yaml_abits", "yaml_res_huge", "yaml_res_neg", "yaml_res_str",
            "yaml_width_nan", "yaml_width_inf", "yaml_classes", "yaml_channels", "yaml_unknown", "yaml_stage_bad",
            "yaml_stages_huge", "yaml_python_tag"]
# (a 10,000-deep YAML takes PyYAML ~2 s to refuse: search and finish try it, the other commands share the loader)
YAML_SOME = ["missing_yaml", "garbage", "yaml_nonutf8", "yaml_bomb", "yaml_bits3", "yaml_res_huge",
             "yaml_width_nan", "yaml_unknown", "yaml_python_tag"]
NPZ_BAD = ["missing_npz", "dir", "garbage_npz", "empty_npz", "npz_2d", "npz_5d", "npz_object", "npz_object_labels",
           "npz_huge_label", "npz_neg_label", "npz_float_labels", "npz_nan", "npz_inf", "npz_mismatch",
           "npz_no_labels", "npz_no_images", "npz_zero", "npz_one_class", "npz_uint16", "npz_strings",
           "npz_huge_header", "npy"]
NPZ_SOME = ["missing_npz", "garbage_npz", "npz_object", "npz_huge_label", "npz_nan", "npz_mismatch",
            "npz_huge_header"]
CALIB_BAD = ["missing_npz", "dir", "garbage_npz", "empty_npz", "npz_2d", "npz_object", "npz_nan", "npz_huge_header",
             "npz_huge_label", "npy", "json_list", "pickle"]
TABLE_BAD = ["missing", "dir", "garbage_json", "empty", "trunc_json", "deep_json", "json_list", "table_nan",
             "csv_garbage", "pickle"]
HYBRID_BAD = ["missing", "dir", "garbage_json", "empty", "deep_json", "json_list", "json_wrong_types", "pickle"]
PROFILE_BAD = ["missing", "dir", "garbage_json", "empty", "trunc_json", "deep_json", "json_list", "profile_nan",
               "profile_unknown"]

FILE_SLOTS: list[tuple[str, tuple[str, ...], list[str]]] = [
    ("finish-qat/arch", ("finish", "qat", "{F}", "--out", "{new_pt}", "--no-progress"), ARCH_BAD),
    ("finish-ptq/arch", ("finish", "ptq", "{F}", "--out", "{new_pt}", "--no-progress"), ARCH_BAD[:14]),
    ("latency-predict/arch", ("latency", "predict", "{F}"), ARCH_BAD),
    ("calib-build/arch", ("calib", "build", "--from", "digits", "--arch", "{F}", "--out", "{new_npz}"), ARCH_BAD[:17]),
    ("export-onnx/model", ("export", "onnx", "{F}", "--out", "{new_onnx}"), MODEL_BAD + ["model_nan"]),
    ("export-tensorrt/model", ("export", "tensorrt", "{F}", "--out", "{new_onnx}"), MODEL_BAD[:7]),
    ("export-coreml/model", ("export", "coreml", "{F}", "--out", "{new_mlpackage}"), MODEL_BAD[:7]),
    ("export-tflite/model", ("export", "tflite", "{F}", "--out", "{new_tflite}"), MODEL_BAD[:7]),
    ("diagnose-clipping/model", ("diagnose", "clipping", "{F}"), MODEL_BAD),
    ("calib-build/model", ("calib", "build", "--from", "digits", "--model", "{F}", "--out", "{new_npz}"),
     MODEL_BAD[:8]),
    ("finish-qat/run", ("finish", "qat", "{F}", "--out", "{new_pt}", "--no-progress"),
     ["run_empty", "run_cfg_garbage", "run_cfg_seed_str", "run_cfg_data", "run_cfg_space_bad"]),
    ("supernet-train/pretrained", ("supernet", "train", "--space", "mobilenetv2", "--pretrained", "{F}", "--out",
                                   "{new_sn}", "--no-progress"), STATE_DICT_BAD),
    ("finish-qat/pretrained", ("finish", "qat", "{arch}", "--pretrained", "{F}", "--out", "{new_pt}",
                               "--no-progress"), STATE_DICT_BAD),
    ("finish-ptq/pretrained", ("finish", "ptq", "{arch}", "--pretrained", "{F}", "--out", "{new_pt}",
                               "--no-progress"), STATE_DICT_BAD[:5]),
    ("search/predictor", ("search", "--accuracy", "predictor", "--accuracy-path", "{F}", "--out", "{new_run}",
                          "--no-progress"), PREDICTOR_BAD),
    ("search/supernet", ("search", "--accuracy", "supernet", "--accuracy-path", "{F}", "--out", "{new_run}",
                         "--no-progress"), SUPERNET_BAD),
    ("search/space", ("search", "--space", "{F}", "--out", "{new_run}", "--no-progress"), YAML_BAD),
    ("demo/space", ("demo", "--space", "{F}", "--out", "{new_run}", "--no-progress"), YAML_SOME),
    ("supernet-train/space", ("supernet", "train", "--space", "{F}", "--out", "{new_sn}", "--no-progress"), YAML_SOME),
    ("finish-qat/space", ("finish", "qat", "{arch}", "--space", "{F}", "--out", "{new_pt}", "--no-progress"),
     YAML_SOME + ["yaml_deep"]),
    ("latency-predict/space", ("latency", "predict", "{arch}", "--space", "{F}"), YAML_SOME),
    ("latency-measure/space", ("latency", "measure", "--space", "{F}", "--out", "{new_table}", "--no-progress"),
     YAML_SOME),
    ("latency-eval/space", ("latency", "eval", "--space", "{F}", "--no-progress"), YAML_SOME[:6]),
    ("search/table", ("search", "--latency", "table", "--latency-table", "{F}", "--out", "{new_run}",
                      "--no-progress"), TABLE_BAD),
    ("latency-predict/table", ("latency", "predict", "{arch}", "--latency", "table", "--latency-table", "{F}"),
     TABLE_BAD),
    ("latency-eval/table", ("latency", "eval", "--latency-table", "{F}", "--no-progress"), TABLE_BAD[:6]),
    ("search/hybrid", ("search", "--latency", "hybrid", "--latency-hybrid", "{F}", "--out", "{new_run}",
                       "--no-progress"), HYBRID_BAD),
    ("latency-predict/hybrid", ("latency", "predict", "{arch}", "--latency", "hybrid", "--latency-hybrid", "{F}"),
     HYBRID_BAD),
    ("search/profile", ("search", "--target", "{F}", "--out", "{new_run}", "--no-progress"), PROFILE_BAD),
    ("latency-show/profile", ("latency", "show", "{F}"), PROFILE_BAD),
    ("latency-predict/profile", ("latency", "predict", "{arch}", "--target", "{F}"), PROFILE_BAD[:8]),
]

DATA_SLOTS: list[tuple[str, tuple[str, ...], list[str]]] = [
    ("search/npz", ("search", "--data", "npz", "--data-path", "{F}", "--out", "{new_run}", "--no-progress"), NPZ_BAD),
    ("demo/npz", ("demo", "--data", "npz", "--data-path", "{F}", "--out", "{new_run}", "--no-progress"), NPZ_SOME),
    ("supernet-train/npz", ("supernet", "train", "--data", "npz", "--data-path", "{F}", "--out", "{new_sn}",
                            "--no-progress"), NPZ_SOME),
    ("finish-qat/npz", ("finish", "qat", "{arch}", "--data", "npz", "--data-path", "{F}", "--out", "{new_pt}",
                        "--no-progress"), NPZ_SOME + ["npz_rgb"]),
    ("finish-ptq/npz", ("finish", "ptq", "{arch}", "--data", "npz", "--data-path", "{F}", "--out", "{new_pt}",
                        "--no-progress"), NPZ_SOME + ["npz_rgb"]),
    ("calib-build/npz", ("calib", "build", "--from", "npz", "{F}", "--out", "{new_npz}"), NPZ_BAD),
    ("finish-qat/calib", ("finish", "qat", "{arch}", "--init", "ptq", "--calib", "{F}", "--out", "{new_pt}",
                          "--no-progress"), CALIB_BAD),
    ("finish-ptq/calib", ("finish", "ptq", "{arch}", "--calib", "{F}", "--out", "{new_pt}", "--no-progress"),
     CALIB_BAD),
    ("diagnose-clipping/calib", ("diagnose", "clipping", "{model}", "--calib", "{F}"), CALIB_BAD),
    ("calib-show/file", ("calib", "show", "{F}"), CALIB_BAD),
    ("search/imagefolder", ("search", "--data", "imagefolder", "--data-path", "{F}", "--out", "{new_run}",
                            "--no-progress"), ["missing", "garbage", "folder_empty", "folder_one_class",
                                               "folder_corrupt"]),
    ("finish-qat/imagefolder", ("finish", "qat", "{arch}", "--data", "imagefolder", "--data-path", "{F}", "--out",
                                "{new_pt}", "--no-progress"), ["folder_empty", "folder_corrupt", "folder_rgb"]),
    ("calib-build/imagefolder", ("calib", "build", "--from", "imagefolder", "{F}", "--out", "{new_npz}"),
     ["missing", "garbage", "folder_empty", "folder_one_class", "folder_corrupt"]),
    ("search/cifar10", ("search", "--data", "cifar10", "--data-path", "{F}", "--out", "{new_run}", "--no-progress"),
     ["missing", "garbage", "folder_empty", "cifar_bad"]),
]


def _fixture_slug(name: str) -> str:
    return name


def file_cases() -> list[Case]:
    cases = []
    for category, slots in (("files", FILE_SLOTS), ("data", DATA_SLOTS)):
        for slot, argv, bad in slots:
            for name in bad:
                cases.append(Case(f"{category}/{slot}/{_fixture_slug(name)}", category,
                                  tuple(a.replace("{F}", "{" + name + "}") for a in argv)))
    return cases


# outputs: (id, argv)
OUTPUT_CASES: list[tuple[str, tuple[str, ...]]] = [
    ("search/out-under-file", ("search", "--out", "{userfile}/run", "--no-progress")),
    ("search/out-is-file", ("search", "--out", "{userfile}", "--no-progress")),
    ("search/out-not-empty", ("search", "--out", "{user_dir}", "--no-progress")),
    ("demo/out-under-file", ("demo", "--out", "{userfile}/run", "--no-progress")),
    ("demo/out-is-file", ("demo", "--out", "{userfile}", "--no-progress")),
    ("demo/out-not-empty", ("demo", "--out", "{user_dir}", "--no-progress")),
    ("supernet-train/out-under-file", ("supernet", "train", "--out", "{userfile}/sn", "--no-progress")),
    ("supernet-train/out-is-file", ("supernet", "train", "--out", "{sn_out_file}", "--no-progress")),
    ("supernet-train/resume-empty", ("supernet", "train", "--out", "{run_empty}", "--resume", "--no-progress")),
    ("supernet-train/resume-missing", ("supernet", "train", "--out", "{new_sn}", "--resume", "--no-progress")),
    ("supernet-train/resume-garbage", ("supernet", "train", "--out", "{sn_garbage}", "--resume", "--no-progress")),
    ("supernet-train/resume-evil", ("supernet", "train", "--out", "{sn_evil}", "--resume", "--no-progress")),
    ("supernet-train/resume-empty-file", ("supernet", "train", "--out", "{sn_empty_file}", "--resume",
                                          "--no-progress")),
    ("finish-qat/out-existing", ("finish", "qat", "{arch}", "--out", "{user_pt}", "--no-progress")),
    ("finish-qat/out-under-file", ("finish", "qat", "{arch}", "--out", "{userfile}/model.pt", "--no-progress")),
    ("finish-qat/out-is-dir", ("finish", "qat", "{arch}", "--out", "{user_dir}", "--no-progress")),
    ("finish-ptq/out-existing", ("finish", "ptq", "{arch}", "--out", "{user_pt}", "--no-progress")),
    ("finish-ptq/out-under-file", ("finish", "ptq", "{arch}", "--out", "{userfile}/model.pt", "--no-progress")),
    ("finish-ptq/out-is-dir", ("finish", "ptq", "{arch}", "--out", "{user_dir}", "--no-progress")),
    *[(f"export-{b}/out-existing", ("export", b, "{model}", "--out", "{user_onnx}"))
      for b in ("onnx", "tensorrt", "coreml", "tflite")],
    *[(f"export-{b}/out-under-file", ("export", b, "{model}", "--out", "{userfile}/m.onnx"))
      for b in ("onnx", "tensorrt", "coreml", "tflite")],
    ("export-onnx/out-is-dir", ("export", "onnx", "{model}", "--out", "{user_dir}")),
    ("export-onnx/report-existing", ("export", "onnx", "{model}", "--out", "{new_onnx}", "--report", "{user_json}")),
    ("export-onnx/report-under-file", ("export", "onnx", "{model}", "--out", "{new_onnx}", "--report",
                                       "{userfile}/r.json")),
    ("export-onnx/report-is-dir", ("export", "onnx", "{model}", "--out", "{new_onnx}", "--report", "{user_dir}")),
    ("export-onnx/out-same-as-model", ("export", "onnx", "{model}", "--out", "{model}")),
    ("calib-build/out-existing", ("calib", "build", "--from", "digits", "--out", "{user_npz}")),
    ("calib-build/out-under-file", ("calib", "build", "--from", "digits", "--out", "{userfile}/c.npz")),
    ("calib-build/out-is-dir", ("calib", "build", "--from", "digits", "--out", "{user_dir}")),
    ("latency-measure/out-existing", ("latency", "measure", "--out", "{user_json}", "--no-progress")),
    ("latency-measure/out-under-file", ("latency", "measure", "--out", "{userfile}/t.json", "--no-progress")),
    ("latency-measure/out-is-dir", ("latency", "measure", "--out", "{user_dir}", "--no-progress")),
    ("latency-eval/out-existing", ("latency", "eval", "--out", "{user_json}", "--no-progress")),
    ("latency-eval/out-under-file", ("latency", "eval", "--out", "{userfile}/e.json", "--no-progress")),
    ("latency-eval/save-hybrid-existing", ("latency", "eval", "--save-hybrid", "{user_json}", "--no-progress")),
    ("latency-eval/save-hybrid-under-file", ("latency", "eval", "--save-hybrid", "{userfile}/h.json",
                                             "--no-progress")),
    ("diagnose-clipping/json-existing", ("diagnose", "clipping", "{model}", "--json", "{user_json}")),
    ("diagnose-clipping/json-under-file", ("diagnose", "clipping", "{model}", "--json", "{userfile}/c.json")),
]


def output_cases() -> list[Case]:
    return [Case(f"outputs/{i}", "outputs", argv) for i, argv in OUTPUT_CASES]


NAME_CASES: list[tuple[str, tuple[str, ...]]] = [
    *[(f"{c}/target={t or 'empty'}", BASE[c] + ("--target", t))
      for c in ("search", "demo", "latency-predict", "latency-measure", "latency-eval")
      for t in ("nosuch", "cuda", "")],
    *[(f"{c}/torch-device={d or 'empty'}", BASE[c] + ("--torch-device", d))
      for c in ("search", "demo", "supernet-train", "finish-qat", "finish-ptq")
      for d in ("nosuch", "cuda:99", "edgetpu", "")],
    *[(f"{c}/amp=nosuch", BASE[c] + ("--amp", "nosuch")) for c in ("search", "supernet-train", "finish-qat")],
    ("search/amp-fp16-on-cpu", BASE["search"] + ("--amp", "fp16")),
    *[(f"{c}/strategy={s or 'empty'}", BASE[c] + ("--strategy", s))
      for c in ("search", "demo") for s in ("nosuch", "NSGA2", "")],
    *[(f"{c}/accuracy=nosuch", BASE[c] + ("--accuracy", "nosuch")) for c in ("search", "demo")],
    ("search/proxy=nosuch", BASE["search"] + ("--accuracy", "zero-cost", "--proxy", "nosuch")),
    ("search/executor=nosuch", BASE["search"] + ("--executor", "nosuch")),
    *[(f"{c}/latency=nosuch", BASE[c] + ("--latency", "nosuch")) for c in ("search", "latency-predict")],
    *[(f"{c}/data=nosuch", BASE[c] + ("--data", "nosuch")) for c in ("search", "supernet-train", "finish-qat")],
    ("calib-build/from=nosuch", ("calib", "build", "--from", "nosuch", "--out", "{new_npz}")),
    ("calib-build/split=test", BASE["calib-build"] + ("--split", "test")),
    *[(f"finish-qat/{f}=nosuch", BASE["finish-qat"] + (f"--{f}", "nosuch")) for f in ("teacher", "init")],
    *[(f"finish-ptq/{f}=nosuch", BASE["finish-ptq"] + (f"--{f}", "nosuch")) for f in ("method", "init")],
    ("export/backend=nosuch", ("export", "nosuch", "{model}", "--out", "{new_onnx}")),
    *[(f"export-{b}/target-profile=nosuch", BASE[f"export-{b}"] + ("--target-profile", "nosuch"))
      for b in ("onnx", "tensorrt", "coreml", "tflite")],
    ("export-onnx/target-profile=cuda", BASE["export-onnx"] + ("--target-profile", "cuda")),
    ("latency-show/nosuch", ("latency", "show", "nosuch")),
    ("latency-show/empty", ("latency", "show", "")),
    ("diagnose-clipping/split=nosuch", BASE["diagnose-clipping"] + ("--split", "nosuch")),
    ("command=nosuch", ("nosuch",)),
    ("supernet/action=nosuch", ("supernet", "nosuch")),
    ("search/option=nosuch", BASE["search"] + ("--nosuch",)),
    ("search/preset-space=nosuch", BASE["search"] + ("--space", "mobilenetv9")),
]


def name_cases() -> list[Case]:
    return [Case(f"names/{i}", "names", argv) for i, argv in NAME_CASES]


RESUME_RUNS = ["missing", "userfile", "run_empty", "run_cfg_deep", "run_cfg_garbage", "run_cfg_list", "run_cfg_trunc",
               "run_cfg_seed_str", "run_cfg_seed_huge", "run_cfg_epochs_neg", "run_cfg_candidates_huge",
               "run_cfg_batch_zero", "run_cfg_budget_nan", "run_cfg_unknown", "run_cfg_target", "run_cfg_strategy",
               "run_cfg_space_bad", "run_cfg_data", "run_history_binary", "run_history_dir", "run_history_tampered",
               "run_history_json_list"]


def resume_cases() -> list[Case]:
    return [Case(f"resume/search/{name}", "resume", ("search", "--resume", "{" + name + "}", "--no-progress"))
            for name in RESUME_RUNS]


MISC_CASES: list[tuple[str, tuple[str, ...]]] = [
    *[(f"search/strategy-options={slug}", BASE["search"] + ("--strategy", "nsga2", "--strategy-options", v))
      for slug, v in [("not-json", "not json"), ("list", "[1, 2]"), ("string", '"x"'), ("pop-neg", '{"pop_size": -1}'),
                      ("pop-str", '{"pop_size": "x"}'), ("pop-inf", '{"pop_size": 1e400}'),
                      ("pop-nan", '{"pop_size": NaN}'), ("unknown", '{"nosuch": 1}'), ("deep", DEEP_JSON),
                      ("trunc", '{"pop_size": ')]],
    ("search/random-options-unknown", BASE["search"] + ("--strategy-options", '{"pop_size": 8}')),
    ("search/ray-address-without-ray", BASE["search"] + ("--ray-address", "127.0.0.1:6379")),
    ("search/ray-gpus-without-ray", BASE["search"] + ("--ray-gpus-per-task", "1")),
    ("search/predictor-without-path", BASE["search"] + ("--accuracy", "predictor")),
    ("search/table-without-path", BASE["search"] + ("--latency", "table")),
    ("search/hybrid-without-path", BASE["search"] + ("--latency", "hybrid")),
    ("search/npz-without-path", BASE["search"] + ("--data", "npz")),
    ("search/resume-and-out", ("search", "--resume", "{run_empty}", "--out", "{new_run}", "--no-progress")),
    ("finish-qat/init-pretrained-without-file", BASE["finish-qat"] + ("--init", "pretrained")),
    ("finish-qat/pretrained-and-scratch", BASE["finish-qat"] + ("--init", "scratch", "--pretrained", "{model}")),
    ("finish-qat/no-arch", ("finish", "qat", "--out", "{new_pt}")),
    ("finish-qat/inline-json-bad", ("finish", "qat", '{"resolution": 16', "--out", "{new_pt}", "--no-progress")),
    ("finish-qat/inline-json-deep", ("finish", "qat", "{" + '"a": {' * 5000 + "}" * 5001, "--out", "{new_pt}",
                                     "--no-progress")),
    ("latency-predict/inline-json-list", ("latency", "predict", "{[1, 2]")),
    ("calib-build/resolution-and-arch", BASE["calib-build"] + ("--resolution", "16", "--arch", "{arch}")),
    ("calib-build/npz-without-src", ("calib", "build", "--from", "npz", "--out", "{new_npz}")),
    ("calib-build/n-below-classes", BASE["calib-build"] + ("--n", "5", "--min-per-class", "1")),
    ("calib-build/min-per-class-above-n", BASE["calib-build"] + ("--n", "20", "--min-per-class", "50")),
    ("export-onnx/no-out", ("export", "onnx", "{model}")),
    ("diagnose-clipping/no-model", ("diagnose", "clipping")),
    ("latency-measure/target-edgetpu", BASE["latency-measure"] + ("--target", "edgetpu")),
    ("latency-eval/target-edgetpu", BASE["latency-eval"] + ("--target", "edgetpu")),
]


def misc_cases() -> list[Case]:
    return [Case(f"misc/{i}", "misc", argv) for i, argv in MISC_CASES]


#: cases run again without --no-progress, as a user types them: nothing (progress bars, notes about the
#: target) may reach stderr before the refusal
PROGRESS_OF = ["numbers/search/epochs=0", "numbers/demo/budget-ms=nan", "numbers/supernet-train/epochs=0",
               "numbers/finish-qat/lr=nan", "files/search/space/yaml_bits3", "files/search/space/yaml_res_huge",
               "files/search/predictor/pickle", "files/search/table/table_nan", "files/finish-qat/arch/deep_json",
               "data/search/npz/npz_huge_label", "data/search/npz/npz_nan", "data/finish-qat/npz/npz_rgb",
               "data/finish-ptq/calib/npz_object", "data/supernet-train/npz/npz_object", "outputs/demo/out-not-empty",
               "outputs/supernet-train/out-under-file", "outputs/finish-qat/out-under-file",
               "names/demo/strategy=nosuch", "names/search/torch-device=cuda:99", "resume/search/run_history_tampered",
               "resume/search/run_cfg_seed_str", "misc/search/strategy-options=pop-neg"]


def progress_cases(cases: list[Case]) -> list[Case]:
    by_id = {c.id: c for c in cases}
    return [Case(f"progress/{i}", "progress", tuple(a for a in by_id[i].argv if a != "--no-progress"))
            for i in PROGRESS_OF]


def all_cases() -> list[Case]:
    cases = number_cases() + file_cases() + output_cases() + name_cases() + resume_cases() + misc_cases()
    cases += progress_cases(cases)
    ids = [c.id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    assert not dup, f"duplicate case ids: {dup}"
    return cases


#: cases also run through the installed entry point (a new process each: torch imports, warnings, exit status)
ENTRY_POINT_SAMPLE = [
    "numbers/search/seed=-1",
    "numbers/export-onnx/min-agreement=nan",
    "files/export-onnx/model/pickle_pt",
    "files/finish-qat/arch/torch_evil",
    "files/search/space/yaml_deep",
    "data/search/npz/npz_huge_label",
    "outputs/supernet-train/out-under-file",
    "names/demo/strategy=nosuch",
    "resume/search/run_cfg_seed_str",
    "progress/data/finish-qat/npz/npz_rgb",
]
