"""Run the hostile cases of :mod:`tests.robustness.cases` and judge each (issue 14, item 6).

A case is **clean** when ``qnas`` exits 2, its stderr is exactly one non-empty line and no traceback,
its stdout is empty (no report, no "measuring ..." line: no work began), nothing is left in its directory
that was not there before (**leftover** otherwise) and every file
that was there is byte-identical (**lost** otherwise), within :data:`LIMIT_S` seconds (a case that
starts training is caught by the limit, and stopped at :data:`HARD_LIMIT_S`).

:func:`run_case` runs one case in this process (``qnas.cli.main`` with the output captured at the
file-descriptor level, so C++ warnings count as lines too, and with the warning filters of a fresh
interpreter) or, with ``subprocess=True``, through the real entry point. :func:`sweep` runs many
and counts; ``bench/robustness_sweep.py`` and ``tests/robustness/test_robustness.py`` use both.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess as sp
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .cases import Case, materialize

__all__ = ["LIMIT_S", "HARD_LIMIT_S", "Outcome", "run_case", "sweep", "warm_up", "entry_point"]

#: a refused input must be refused within this many seconds (in process, after :func:`warm_up`)
LIMIT_S = 10.0
#: a case still running after this long is stopped (it is doing work it should have refused)
HARD_LIMIT_S = 30.0
#: the real entry point also imports torch and the exporters: allow for that
SUBPROCESS_LIMIT_S = 60.0


@dataclass
class Outcome:
    id: str
    code: int | None
    stderr: str
    stdout: str
    seconds: float
    new: list[str] = field(default_factory=list)  # paths left behind (relative to the case directory)
    changed: list[str] = field(default_factory=list)  # user files changed or removed
    raised: str = ""  # an exception that escaped qnas.cli.main (or "timeout")
    limit_s: float = LIMIT_S

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def problems(self) -> list[str]:
        """What is wrong with this outcome (empty: clean)."""
        out = []
        if self.raised:
            out.append(f"raised {self.raised}")
        if self.code != 2:
            out.append(f"exit {self.code}")
        lines = self.error_lines
        if len(lines) != 1:
            out.append(f"{len(lines)} stderr lines")
        if "Traceback" in self.stderr or "Traceback" in self.stdout:
            out.append("traceback")
        if self.stdout.strip():  # a refused input prints no report, no "measuring ..." line: no work began
            out.append(f"printed {self.stdout.strip().splitlines()[0][:80]!r} on stdout")
        if self.seconds > self.limit_s:
            out.append(f"took {self.seconds:.1f} s")
        if self.new:
            out.append(f"left {self.new[:5]}")
        if self.changed:
            out.append(f"changed {self.changed[:5]}")
        return out

    @property
    def clean(self) -> bool:
        return not self.problems()

    def describe(self) -> str:
        first = self.error_lines[:3]
        return f"{self.id}: {'; '.join(self.problems())}; stderr: {first}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stderr"] = self.stderr[-2000:]
        d["stdout"] = self.stdout[-500:]
        d["problems"] = self.problems()
        return d


def _snapshot(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (``"dir"`` for directories) under ``root``."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            snap[os.path.relpath(os.path.join(dirpath, d), root)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            try:
                with open(p, "rb") as fh:
                    snap[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
            except OSError as e:
                snap[os.path.relpath(p, root)] = f"unreadable: {e}"
    return snap


class _CaseTimeout(BaseException):
    """Raised by the alarm in a case that runs past :data:`HARD_LIMIT_S` (not an Exception: qnas must not catch it)."""


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    def fire(signum, frame):
        raise _CaseTimeout()

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def _captured_fds() -> Iterator[dict[str, str]]:
    """Capture fd 1 and 2 (and ``sys.stdout`` / ``sys.stderr``) into the dict it yields, filled on exit."""
    result: dict[str, str] = {}
    sys.stdout.flush()
    sys.stderr.flush()
    files = {1: tempfile.TemporaryFile(), 2: tempfile.TemporaryFile()}
    saved = {fd: os.dup(fd) for fd in files}
    old_out, old_err = sys.stdout, sys.stderr
    for fd, f in files.items():
        os.dup2(f.fileno(), fd)
    sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
    sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)
    try:
        yield result
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout.close()
        sys.stderr.close()
        sys.stdout, sys.stderr = old_out, old_err
        for fd, f in files.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            f.seek(0)
            result["stdout" if fd == 1 else "stderr"] = f.read().decode("utf-8", errors="replace")
            f.close()


@contextlib.contextmanager
def _fresh_interpreter_warnings() -> Iterator[None]:
    """Python's default warning filters (as in ``python -m qnas``), printed to the current ``sys.stderr``
    (pytest's own filters and recorder are set aside for the case)."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        warnings.simplefilter("ignore", ResourceWarning)
        warnings.simplefilter("ignore", ImportWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")

        def show(message, category, filename, lineno, file=None, line=None):
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else None


def _run_in_process(argv: list[str], cwd: Path) -> tuple[int | None, str, str, float, str]:
    from qnas.cli import main

    threads = _torch_threads()
    env_debug = os.environ.pop("QNAS_DEBUG", None)
    raised = ""
    code: int | None = None
    t0 = time.perf_counter()
    try:
        with _chdir(cwd), _fresh_interpreter_warnings(), _captured_fds() as out:
            try:
                with _alarm(HARD_LIMIT_S):
                    code = main(argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code, file=sys.stderr)
            except _CaseTimeout:
                raised = f"timeout after {HARD_LIMIT_S:.0f} s"
            except BaseException as e:  # noqa: BLE001 -- anything that escapes main is a finding
                raised = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                import traceback

                traceback.print_exc()
    finally:
        seconds = time.perf_counter() - t0
        if env_debug is not None:
            os.environ["QNAS_DEBUG"] = env_debug
        if threads is not None and _torch_threads() != threads:
            sys.modules["torch"].set_num_threads(threads)
    return code, out.get("stdout", ""), out.get("stderr", ""), seconds, raised


def entry_point() -> list[str]:
    """The installed ``qnas`` script next to this interpreter, else ``python -m qnas``."""
    script = Path(sys.executable).parent / "qnas"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "qnas"]


def _run_subprocess(argv: list[str], cwd: Path) -> tuple[int | None, str, str, float, str]:
    env = {k: v for k, v in os.environ.items() if k != "QNAS_DEBUG"}
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    try:
        proc = sp.run(entry_point() + argv, cwd=cwd, env=env, capture_output=True, text=True, errors="replace",
                      timeout=SUBPROCESS_LIMIT_S)
        return proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - t0, ""
    except sp.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, out, err, time.perf_counter() - t0, f"timeout after {SUBPROCESS_LIMIT_S:.0f} s"


def run_case(case: Case, workdir: Path, *, subprocess: bool = False) -> Outcome:
    """Run ``case`` in ``workdir`` (an empty directory: its fixtures are written there) and judge it."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    argv = materialize(case, workdir)
    before = _snapshot(workdir)
    run = _run_subprocess if subprocess else _run_in_process
    code, stdout, stderr, seconds, raised = run(argv, workdir)
    after = _snapshot(workdir)
    new = sorted(p for p in after if p not in before)
    changed = sorted(p for p, h in before.items() if after.get(p) != h)
    return Outcome(case.id, code, stderr, stdout, seconds, new, changed, raised,
                   SUBPROCESS_LIMIT_S if subprocess else LIMIT_S)


def warm_up() -> None:
    """Import what the commands import, so that the time limit measures work, not imports."""
    import importlib

    for name in ("torch", "brevitas", "onnx", "onnxruntime", "qnas.searching", "qnas.finishing", "qnas.exporting",
                 "qnas.pipeline", "qnas.model_io", "qnas.latency.evaluation", "qnas.calib_data.build",
                 "qnas.predictors", "qnas.pretrained", "qnas.quant.clipping", "qnas.strategies"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    from qnas.data import load_digits

    load_digits()


def sweep(cases: Iterable[Case], root: Path, *, subprocess_ids: Iterable[str] = (),
          log: Callable[[str], None] | None = None) -> dict:
    """Run every case (each in its own directory under ``root``; those in ``subprocess_ids`` through the
    real entry point) and count: tried / clean / leftover / lost / other."""
    warm_up()
    sub = set(subprocess_ids)
    outcomes: list[Outcome] = []
    t0 = time.perf_counter()
    for i, case in enumerate(cases):
        o = run_case(case, Path(root) / f"{i:04d}", subprocess=case.id in sub)
        outcomes.append(o)
        if log and not o.clean:
            log(o.describe())
    counts = {"tried": len(outcomes), "clean": sum(o.clean for o in outcomes),
              "leftover": sum(bool(o.new) for o in outcomes), "lost": sum(bool(o.changed) for o in outcomes)}
    other = [o for o in outcomes if not o.clean and not o.new and not o.changed]
    counts["other"] = len(other)
    categories: dict[str, dict[str, int]] = {}
    for o in outcomes:
        c = categories.setdefault(o.id.split("/")[0], {"tried": 0, "clean": 0, "seconds": 0.0})
        c["tried"] += 1
        c["clean"] += o.clean
        c["seconds"] = round(c["seconds"] + o.seconds, 1)
    return {"counts": counts, "categories": categories, "seconds": round(time.perf_counter() - t0, 1),
            "subprocess": sorted(sub), "failures": [o.to_dict() for o in outcomes if not o.clean],
            "slowest": sorted(((round(o.seconds, 2), o.id) for o in outcomes), reverse=True)[:10]}
