"""A run directory: config, history (JSON lines, flushed per evaluation),
front, model, exported files, plots and the report; and :func:`resolve_arch`,
which arch a run directory (or a model, or an arch file) stands for."""
from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from qnas.arch import Arch
from qnas.errors import CheckpointError, ConfigError
from qnas.quant.checkpoint import atomic_write
from qnas.space import SearchSpace
from qnas.jsonfile import read_json


#: the lock a process writing a run holds (RunDir.locked)
LOCK_FILE = ".qnas.lock"


class RunDir:
    """Owns the files of one run. Refuses a non-empty directory unless ``overwrite``."""

    def __init__(self, path: str | Path, overwrite: bool = False, resume: bool = False):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"run directory {self.path} is a file; choose another --out")
        if self.path.is_dir() and any(self.path.iterdir()) and not (overwrite or resume):
            raise ConfigError(f"run directory {self.path} is not empty; choose another --out or pass --force to overwrite")
        #: the directory was absent or empty: a run that fails before it has anything worth keeping removes it
        self.fresh = not self.path.exists() or (self.path.is_dir() and not any(self.path.iterdir()))
        self._created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            (self.path / "history.jsonl").unlink(missing_ok=True)
        if resume:
            self._drop_torn_history()

    def _drop_torn_history(self) -> None:
        """A run killed mid-write leaves a torn last line: keep only the complete records."""
        p = self.file("history.jsonl")
        if p.exists():
            good = self.read_history()
            text = "".join(json.dumps(r) + "\n" for r in good)
            if text != p.read_text():
                atomic_write(p, lambda tmp: tmp.write_text(text))

    @contextlib.contextmanager
    def removed_on_early_failure(self) -> Iterator["RunDir"]:
        """Run a block; when it raises and this run started in an absent or empty directory and has
        nothing worth resuming yet (no evaluated arch, no supernet checkpoint), remove what it wrote,
        so the corrected command is not refused for a non-empty directory. A run with something to
        resume is left as it is (``--resume`` continues it)."""
        try:
            yield self
        except BaseException:
            if self.fresh and not self._worth_keeping():
                if self._created:
                    shutil.rmtree(self.path, ignore_errors=True)
                else:
                    for child in self.path.iterdir():
                        if child.is_dir():
                            shutil.rmtree(child, ignore_errors=True)
                        else:
                            child.unlink(missing_ok=True)
            raise

    @contextlib.contextmanager
    def locked(self) -> Iterator["RunDir"]:
        """Hold the run directory's lock (``RUN/.qnas.lock``, an OS file lock released when the process
        ends, however it ends) while the block writes the run; a second writer -- another ``qnas search
        --resume RUN`` -- is refused with one line naming the holder."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; runs are not protected there
            yield self
            return
        import os
        import socket
        import time

        path = self.file(LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
                raise ConfigError(f"run directory {self.path} is in use by {holder}; wait for it to finish "
                                  "or stop it, then run again") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} on {socket.gethostname()} since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
            yield self
        finally:
            os.close(fd)  # releases the lock

    def _worth_keeping(self) -> bool:
        try:
            return bool(self.read_history()) or self.file("supernet").is_dir()
        except ConfigError:  # a damaged history: leave it for the user to look at
            return True

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        text = json.dumps(obj, indent=2, sort_keys=False) + "\n"
        return atomic_write(self.file(name), lambda p: p.write_text(text))

    def append_history(self, record: dict[str, Any]) -> None:
        with open(self.file("history.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def read_history(self) -> list[dict[str, Any]]:
        p = self.file("history.jsonl")
        if not p.exists():
            return []
        if not p.is_file():
            raise ConfigError(f"{p} is not a file; move it away (the run's history is a JSON-lines file)")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{p} is not a text file of JSON lines; move it away to evaluate the run again") from None
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line from a killed run: drop it and re-evaluate
        return out


# ---- the arch of a run --------------------------------------------------------------------
@dataclass
class ArchSource:
    """An arch, the search space it belongs to, and where it was read from.

    ``config`` is the run's ``config.json`` (a run directory), or the data a finished model was
    trained on (``{"data", "data_path", "seed"}``, a ``model.pt``), else empty."""

    arch: Arch
    space: SearchSpace
    config: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None
    model_path: Path | None = None
    note: str = ""


def resolve_arch(source: str | Path | Arch | dict[str, Any], space: SearchSpace | str | Path | None = None, *,
                 validate: bool = True) -> ArchSource:
    """The arch ``source`` names -- the one place that decides which arch a run directory stands for.

    ``source`` is one of

    * a run directory ``RUN``, read in this order of preference:
      1. ``RUN/arch.json`` (the arch a demo chose, or one a user wrote there),
      2. ``RUN/model.pt`` (the arch of the model finished there),
      3. the most accurate arch of ``RUN/front.json`` within the budgets of ``RUN/config.json``;
    * a finished ``model.pt`` (the arch it records);
    * an arch JSON file or inline JSON text (a record ``{"arch": {...}, ...}`` is unwrapped);
    * an :class:`Arch` or its dict.

    The space is ``space`` (a :class:`SearchSpace` or a YAML path) if given, else the one the model
    or run recorded, else the embedded default; with ``validate`` the arch is checked against it."""
    explicit = _space_arg(space)
    recorded: dict[str, Any] | None = None
    config: dict[str, Any] = {}
    run_dir = model_path = None
    note = ""
    if isinstance(source, Arch):
        arch = source
    elif isinstance(source, dict):
        arch = _arch_from_value(source)
    elif isinstance(source, str) and source.lstrip().startswith("{"):
        arch = _arch_from_value(_parse_json(source, "inline arch JSON"))
    else:
        p = Path(source).expanduser()
        if p.is_dir():
            run_dir = p
            config = _run_config(p)
            recorded = config.get("space")
            if (p / "arch.json").is_file():
                arch = _arch_from_value(_read_json(p / "arch.json", "arch"))
            elif (p / "model.pt").is_file():
                arch, recorded, _ = _model_arch(p / "model.pt")
                note = f"arch: the arch of the finished model {p / 'model.pt'}"
            else:
                arch, note = _pick_from_front(p, config)
        elif p.is_file() and p.suffix == ".pt":
            model_path = p
            arch, recorded, data = _model_arch(p)
            config = {"data": data.get("data"), "data_path": data.get("data_path"), "seed": data.get("split_seed")}
        elif p.is_file():
            arch = _arch_from_value(_read_json(p, "arch"))
        else:
            raise ConfigError(f"{source} is neither a run directory, an arch JSON file, a model.pt nor inline JSON")
    sp = explicit or (SearchSpace.from_dict(recorded) if recorded else SearchSpace())
    if validate:
        sp.validate(arch)
    return ArchSource(arch, sp, config, run_dir, model_path, note)


def _space_arg(space: SearchSpace | str | Path | None) -> SearchSpace | None:
    if space is None or isinstance(space, SearchSpace):
        return space
    return SearchSpace.from_yaml(space)


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{what} is not valid JSON ({e.msg} at line {e.lineno}); pass an arch JSON object") from None


def _read_json(path: Path, what: str) -> Any:
    return read_json(path, what, "pass a run directory from qnas search/demo or an arch JSON file")


def _arch_from_value(d: Any) -> Arch:
    if isinstance(d, dict) and "arch" in d and "resolution" not in d:
        d = d["arch"]  # a search record or a report
    return Arch.from_dict(d)


def _run_config(run: Path) -> dict[str, Any]:
    if not (run / "config.json").is_file():
        return {}
    cfg = _read_json(run / "config.json", "run config")
    if not isinstance(cfg, dict):
        raise ConfigError(f"{run / 'config.json'} is not a JSON object; pass a qnas run directory")
    return cfg


def _model_arch(path: Path) -> tuple[Arch, dict[str, Any] | None, dict[str, Any]]:
    """(arch, recorded space or None, data settings) of a finished model's metadata."""
    from qnas.quant.checkpoint import load_checkpoint

    _, meta = load_checkpoint(path)
    if "arch" not in meta:
        raise CheckpointError(f"{path} records no arch; pass a run directory or an arch JSON file")
    return Arch.from_dict(meta["arch"]), meta.get("space"), meta.get("data") or {}


def _pick_from_front(run: Path, config: dict[str, Any]) -> tuple[Arch, str]:
    from qnas.options import search_budget
    from qnas.pareto import most_accurate

    if not (run / "front.json").is_file():
        raise ConfigError(f"run directory {run} has neither arch.json, model.pt nor front.json; pass a finished "
                          "search run or an arch JSON file")
    best = most_accurate(_read_json(run / "front.json", "Pareto front"), search_budget(config))
    if best is None:
        raise ConfigError(f"no arch on the Pareto front of {run} meets the search's budgets; write the arch you "
                          "want to RUN/arch.json or pass an arch JSON file")
    return Arch.from_dict(best["arch"]), f"arch: the most accurate front arch within the budgets ({best['uid']})"
