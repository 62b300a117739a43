"""Target profiles: what a latency target executes natively and how fast.

A latency target (``--target``) is the hardware/runtime a network's latency is
predicted for, named by its profile (``edgetpu``, ``cpu-ort`` ...); it is not
the torch device a search trains on (``--torch-device``).

A profile is a versioned JSON data file (``schema_version`` 2; version 1 files,
which use none of the fields marked "v2" below, still load) loaded with
:mod:`json` (never pickle). Every number in it is a *fact*::

    {"value": ..., "source": "where it comes from", "confidence": "rough"}

so each figure carries its citation and how much to trust it.

Layout (see ``profiles/edgetpu.json`` for a complete example)::

    schema_version            2 (or 1)
    name, description         strings
    primary_unit              the unit a layer is first offered to
    host_unit                 optional: the unit "host" fallbacks run on
    sticky_host_fallback      fact, bool: once one layer falls back to the host,
                              every later layer runs there too (Edge TPU)
    per_inference_overhead_ms fact, float: fixed cost per inference
    transfer                  optional fact {bytes_per_s, latency_ms, include_model_io}:
                              cost of moving an activation between units
    low_bits                  v2, optional fact {op or "*": mode, or {"w4": mode, "a4": mode ...}}:
                              what the target does with each sub-8-bit width (keys
                              ``LOW_BIT_KEYS``), one of ``LOW_BIT_MODES``:
                              "native" (runs at those bits, at least for some shapes,
                              priced with its gain), "upcast" (stored and run in a wider
                              container on the same unit, priced as that container: what
                              the exporter writes), "host" (priced as a host fallback),
                              "exclude" (the target cannot run it at all: pricing it is an
                              error, a search space for this target must not offer it).
                              Every mode but "exclude" must agree with the fallback rules
                              (the loader checks); ops left out get the mode the rules imply.
    units.<name>:
      peak_macs_per_s         fact {precision key: MAC/s}, e.g. {"w8a8": 2e12}
      efficiency              fact {op: fraction of peak}, all six ops
      precision_efficiency    optional fact {precision key: extra factor}
      bandwidth_bytes_per_s   fact, float
      overhead_ms             fact, float: per-layer fixed cost
      output_bytes_per_elem   v2, optional fact, float: bytes a conv/fc moves per output
                              element (default: its activation bits / 8); BitFusion
                              writes and reads back 32-bit partial sums (8)
      energy                  v2, optional fact {"compute_w": W or {compute precision: W},
                              "pj_per_byte": pJ, "static_w": W}: layer energy =
                              compute_w * time the MAC array is busy + pj_per_byte *
                              bytes moved + static_w * layer time
      native                  fact, list of {"prec": "w4a16", "compute": "w16a16",
                              "ops": [...], "k": [1], "stride": [1], "min_cout": 33,
                              "weight_overhead": 0.0625}
                              (compute defaults to prec; ops defaults to all;
                              weights are moved at the native entry's w bits, so
                              a weight-only format like CoreML's w4a16 moves
                              4-bit weights but runs fp16 MACs; v2 ``weight_overhead``:
                              extra weight bytes as a fraction of the packed weights,
                              e.g. one fp16 scale per block of 64 int4 weights = 0.0625)
      fallback                fact {key: target}: what a precision the unit cannot
                              execute runs as. Keys: "w4a8" (exact pair), "a4"
                              (any weight bits), "w2" (any activation bits), "*"
                              (anything). Targets: a key of the same kind
                              ("w8a8", "a8", "w8") or "host". A target on the same
                              unit is an *upcast* (the exporter's wider container, e.g.
                              a 4-bit grid stored as int8 for the Edge TPU) and is priced
                              as that container; "host" is only for what the unit truly
                              cannot run (float layers on an int8 accelerator).

Precision keys are ``w{w_bits}a{a_bits}``; 32 means float32, 16 on a float
unit means fp16. Bit widths between grid points are rounded *up* to
the next of ``W_GRID``/``A_GRID`` (a 3-bit weight runs no faster than a 4-bit
one). Weightless ops (add, pool) ignore ``w_bits``.

``mul`` (the squeeze-excite gate times its feature map) is an elementwise op
like ``add``: a profile that gives no ``mul`` efficiency prices it with the
``add`` efficiency, and a native entry whose ``ops`` list ``add`` but not
``mul`` runs ``mul`` too (every target qnas ships runs both on the same
elementwise unit); give ``mul`` explicitly to say otherwise.

The rule the loader and the analytic model maintain: a precision the target
cannot execute is never cheaper than the precision it falls back to.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from qnas.errors import LatencyTableError, QnasError, UnknownTargetError
from qnas.latency._compat import module_getattr
from qnas.quant.plan import OP_KINDS, WEIGHTLESS_OPS

SCHEMA_VERSION = 2
#: the profile schema versions this qnas reads (a version 1 file uses none of the version 2 fields)
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2)
#: the keys a profile and each of its units may have
PROFILE_KEYS = frozenset({"schema_version", "name", "description", "units", "primary_unit", "host_unit",
                          "sticky_host_fallback", "per_inference_overhead_ms", "transfer", "low_bits"})
UNIT_KEYS = frozenset({"description", "peak_macs_per_s", "efficiency", "precision_efficiency", "bandwidth_bytes_per_s",
                       "overhead_ms", "native", "fallback", "output_bytes_per_elem", "energy"})
OPS = OP_KINDS  # the layer kinds a profile prices (defined with the plan)
W_GRID: tuple[int, ...] = (2, 4, 8, 16, 32)
A_GRID: tuple[int, ...] = (4, 8, 16, 32)
CONFIDENCE_LEVELS: tuple[str, ...] = ("rough", "estimated", "documented", "measured")
HOST = "host"
#: what a target does with a bit width below its native 8 bits (see ``low_bits`` in the module doc)
LOW_BIT_MODES: tuple[str, ...] = ("native", "upcast", "host", "exclude")
#: the sub-8-bit widths on the grids, the keys of a profile's low-bits policy
LOW_BIT_KEYS: tuple[str, ...] = (tuple(f"w{b}" for b in W_GRID if b < 8)
                                 + tuple(f"a{b}" for b in A_GRID if b < 8))
#: layer shapes (k, stride, cout) the low-bits policy is probed on: both sides of every shape
#: condition a shipped profile uses (Hexagon's int4: 1x1, stride 1, more than 32 outputs)
_PROBE_SHAPES: tuple[tuple[int, int, int], ...] = (
    (1, 1, 16), (1, 1, 64), (1, 1, 1024), (1, 2, 64), (3, 1, 64), (3, 2, 16), (5, 1, 256), (7, 2, 1024))

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"

_PREC_RE = re.compile(r"^w(\d+)a(\d+)$")
_W_RE = re.compile(r"^w(\d+)$")
_A_RE = re.compile(r"^a(\d+)$")
_MAX_CHAIN = 32
#: ops a profile may leave out: priced as (and native wherever) the op they stand for
OP_DEFAULTS: dict[str, str] = {"mul": "add"}


def precision_key(w_bits: int, a_bits: int) -> str:
    return f"w{w_bits}a{a_bits}"


def parse_precision_key(key: str) -> tuple[int, int]:
    m = _PREC_RE.match(key)
    if not m:
        raise ValueError(f"not a precision key: {key!r}")
    return int(m.group(1)), int(m.group(2))


def round_bits(bits: int, grid: tuple[int, ...], what: str = "bits") -> int:
    """Round a bit width up to the next grid value (capped at the largest)."""
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 1:
        raise QnasError(f"{what}={bits!r} is not a positive integer bit width; use one of {', '.join(map(str, grid))}")
    for g in grid:
        if bits <= g:
            return g
    return grid[-1]


class ExecPrecision(NamedTuple):
    """Where and at which precision a layer really runs."""

    unit: str
    w_bits: int
    a_bits: int


@dataclass(frozen=True)
class Fact:
    value: Any
    source: str
    confidence: str


@dataclass(frozen=True)
class NativeEntry:
    """One precision a unit executes natively, possibly only for some layer shapes."""

    prec: str
    w_bits: int
    a_bits: int
    compute: str
    ops: tuple[str, ...]
    k: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    min_cout: int | None = None
    weight_overhead: float = 0.0
    """extra weight bytes (block scales, zero points) as a fraction of the packed weight bytes"""

    def applies(self, op: str, k: int, stride: int, cout: int | None) -> bool:
        if op not in self.ops:
            return False
        if self.k is not None and k not in self.k:
            return False
        if self.stride is not None and stride not in self.stride:
            return False
        if self.min_cout is not None and (cout is None or cout < self.min_cout):
            return False
        return True

    def condition(self) -> str:
        """The layer shapes this entry is limited to, in words ("" for every shape)."""
        where = []
        if self.k is not None:
            where.append(f"k in {list(self.k)}")
        if self.stride is not None:
            where.append(f"stride in {list(self.stride)}")
        if self.min_cout is not None:
            where.append(f"cout >= {self.min_cout}")
        return ", ".join(where)


@dataclass(frozen=True)
class UnitEnergy:
    """Energy of a unit: ``compute_w[compute] * t_compute + pj_per_byte * bytes + static_w * t_layer``
    (watts, picojoules per byte moved, seconds)."""

    compute_w: dict[str, float]
    """watts while the MAC array is busy, by compute precision key (``"*"``: any)"""
    pj_per_byte: float
    static_w: float = 0.0

    def compute_watts(self, compute: str) -> float:
        if compute in self.compute_w:
            return self.compute_w[compute]
        return self.compute_w.get("*", 0.0)


@dataclass(frozen=True)
class LowBits:
    """What a target does with one sub-8-bit width (``key``, e.g. ``"w4"``) of one op kind."""

    op: str
    key: str
    mode: str
    """one of :data:`LOW_BIT_MODES`"""
    when: str = ""
    """for "native": the native entries (and their shape conditions) that run it, "" if every shape"""
    otherwise: tuple[str, ...] = ()
    """what it runs as where it is not native (``"w8a8"``, ``"host w8a8"``), sorted"""
    declared: bool = False
    """the profile states the mode (with a source) rather than leaving it to the fallback rules"""

    def __str__(self) -> str:
        other = ", ".join(self.otherwise)
        if self.mode == "native":
            return f"{self.key} native" + (f" as {self.when}; elsewhere runs as {other}" if self.when else "")
        if self.mode == "exclude":
            return f"{self.key} excluded (the target cannot run it)"
        return f"{self.key} {self.mode} (runs as {other})"


@dataclass(frozen=True, eq=False)
class UnitProfile:
    name: str
    description: str
    peak_macs_per_s: dict[str, float]
    efficiency: dict[str, float]
    precision_efficiency: dict[str, float]
    bandwidth_bytes_per_s: float
    overhead_ms: float
    native: tuple[NativeEntry, ...]
    fallback: dict[str, str]
    output_bytes_per_elem: float | None = None
    """bytes a conv/fc moves per output element; None: its activation bits / 8"""
    energy: UnitEnergy | None = None

    def native_entry(self, op: str, w_bits: int, a_bits: int, k: int = 1, stride: int = 1,
                     cout: int | None = None) -> NativeEntry | None:
        """The native entry that runs this op at (w_bits, a_bits), or None.

        Weightless ops match any entry with the same activation bits."""
        for e in self.native:
            if e.a_bits != a_bits:
                continue
            if op not in WEIGHTLESS_OPS and e.w_bits != w_bits:
                continue
            if e.applies(op, k, stride, cout):
                return e
        return None

    def throughput(self, op: str, compute: str) -> float:
        """Sustained MAC/s for an op at a compute precision."""
        return self.peak_macs_per_s[compute] * self.efficiency[op] * self.precision_efficiency.get(compute, 1.0)


@dataclass(frozen=True)
class Transfer:
    bytes_per_s: float
    latency_ms: float
    include_model_io: bool

    def ms(self, nbytes: float) -> float:
        return self.latency_ms + nbytes / self.bytes_per_s * 1e3


@dataclass(frozen=True, eq=False)
class TargetProfile:
    """A loaded, validated latency target profile. Build with :func:`load_profile`.

    (Formerly ``DeviceProfile``; that name still works, with a DeprecationWarning.)"""

    name: str
    description: str
    primary_unit: str
    host_unit: str | None
    sticky_host_fallback: bool
    per_inference_overhead_ms: float
    transfer: Transfer | None
    units: dict[str, UnitProfile]
    facts: dict[str, Fact] = field(repr=False)
    path: str | None = None
    schema_version: int = SCHEMA_VERSION
    #: the profile's declared ``low_bits`` modes, ``{op: {key: mode}}`` (empty: all left to the rules)
    low_bits_declared: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    # -- construction -------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, origin: str = "<dict>") -> "TargetProfile":
        return _Parser(origin).parse(data)

    # -- precision resolution -----------------------------------------------------
    def is_native(self, op: str, w_bits: int, a_bits: int, *, k: int = 1, stride: int = 1,
                  cout: int | None = None, unit: str | None = None) -> bool:
        u = self.units[unit or self.primary_unit]
        w = round_bits(w_bits, W_GRID, "w_bits")
        a = round_bits(a_bits, A_GRID, "a_bits")
        return u.native_entry(op, w, a, k, stride, cout) is not None and (w, a) == (w_bits, a_bits)

    def fallback_chain(self, op: str, w_bits: int, a_bits: int, *, k: int = 1, stride: int = 1,
                       cout: int | None = None, unit: str | None = None) -> list[ExecPrecision]:
        """Every step from the requested precision to the one that executes (last)."""
        if op not in OPS:
            raise QnasError(f"unknown layer op {op!r}; use one of {', '.join(OPS)}")
        excluded = self.excluded(op, w_bits, a_bits)
        if excluded:
            raise LatencyTableError(
                f"latency target {self.name!r} cannot run {op} at {excluded} (its profile's low_bits excludes it: "
                f"{self._where()}); search a space without {excluded} for this target, or pick another target")
        unit = unit or self.primary_unit
        if unit not in self.units:
            raise QnasError(f"profile {self.name!r} has no unit {unit!r}; its units are {', '.join(self.units)}")
        w = round_bits(w_bits, W_GRID, "w_bits")
        a = round_bits(a_bits, A_GRID, "a_bits")
        if op in WEIGHTLESS_OPS:
            w = a if a in W_GRID else 32
        steps = [ExecPrecision(unit, w, a)]
        seen: set[ExecPrecision] = set()
        while True:
            u = self.units[unit]
            entry = u.native_entry(op, w, a, k, stride, cout)
            if entry is not None:
                if op in WEIGHTLESS_OPS and entry.w_bits != w:
                    w = entry.w_bits
                    steps[-1] = ExecPrecision(unit, w, a)
                return steps
            state = ExecPrecision(unit, w, a)
            if state in seen or len(steps) > _MAX_CHAIN:
                raise LatencyTableError(
                    f"latency target profile {self._where()}: fallback rules of unit {unit!r} loop at "
                    f"{precision_key(w, a)} for op {op!r}; make the chain end at a native precision")
            seen.add(state)
            key, target = _lookup_fallback(u.fallback, w, a)
            if target is None:
                raise LatencyTableError(
                    f"latency target profile {self._where()}: unit {unit!r} cannot run {op} at {precision_key(w, a)} "
                    f"and has no fallback rule for it; add a '{precision_key(w, a)}', 'a{a}', 'w{w}' or '*' "
                    f"entry to units.{unit}.fallback")
            if target == HOST:
                if self.host_unit is None or unit == self.host_unit:
                    raise LatencyTableError(
                        f"latency target profile {self._where()}: units.{unit}.fallback sends {key!r} to 'host' but "
                        f"{'the profile has no host_unit' if self.host_unit is None else 'it is the host unit'}; "
                        f"set host_unit or map {key!r} to a precision")
                unit = self.host_unit
            else:
                w, a = _apply_target(key, target, w, a)
            steps.append(ExecPrecision(unit, w, a))

    def resolve_precision(self, op: str, w_bits: int, a_bits: int, *, k: int = 1, stride: int = 1,
                          cout: int | None = None, unit: str | None = None) -> ExecPrecision:
        """``(unit, w_bits_exec, a_bits_exec)`` a layer really runs at.

        ``k``, ``stride`` and ``cout`` matter where a precision is native only
        for some shapes (Hexagon's int4 weights: 1x1 stride-1 conv with >32
        outputs, fc). ``unit`` starts the resolution on another unit than the
        primary one (used after a sticky host fallback)."""
        return self.fallback_chain(op, w_bits, a_bits, k=k, stride=stride, cout=cout, unit=unit)[-1]

    def resolve_layer(self, layer: Any, unit: str | None = None) -> ExecPrecision:
        return self.resolve_precision(layer.op, layer.w_bits, layer.a_bits, k=layer.k, stride=layer.stride,
                                      cout=layer.cout, unit=unit)

    def native_entry_for(self, layer: Any, exe: ExecPrecision) -> NativeEntry:
        entry = self.units[exe.unit].native_entry(layer.op, exe.w_bits, exe.a_bits, layer.k, layer.stride, layer.cout)
        assert entry is not None, "resolve_precision always ends at a native entry"
        return entry

    def citations(self) -> dict[str, Fact]:
        """Every fact in the profile by its dotted path, with source and confidence."""
        return dict(self.facts)

    # -- sub-8-bit widths ---------------------------------------------------------
    def excluded(self, op: str, w_bits: int, a_bits: int) -> str | None:
        """The low-bits key (``"w4"``, ``"a4"``) under which the profile excludes this precision, else None."""
        if not self._excluding_ops():
            return None
        policy = self.low_bits_declared.get(op, {})
        keys = [f"a{round_bits(a_bits, A_GRID, 'a_bits')}"]
        if op not in WEIGHTLESS_OPS:
            keys.insert(0, f"w{round_bits(w_bits, W_GRID, 'w_bits')}")
        return next((k for k in keys if policy.get(k) == "exclude"), None)

    def _excluding_ops(self) -> frozenset:
        ops = self.__dict__.get("_excluding_ops_cache")
        if ops is None:
            ops = frozenset(op for op, policy in self.low_bits_declared.items() if "exclude" in policy.values())
            object.__setattr__(self, "_excluding_ops_cache", ops)
        return ops

    def excluded_widths(self, w_bits: Iterable[int], a_bits: Iterable[int]) -> dict[str, list[str]]:
        """``{op: ["w2", ...]}``: the widths among ``w_bits``/``a_bits`` (e.g. a search space's) that the
        profile excludes, per op kind; empty when a space offers nothing the target excludes. A search
        checks this before its first evaluation and drops or refuses those widths."""
        keys = ({f"w{round_bits(w, W_GRID, 'w_bits')}" for w in w_bits}
                | {f"a{round_bits(a, A_GRID, 'a_bits')}" for a in a_bits})
        out: dict[str, list[str]] = {}
        for op, policy in self.low_bits_declared.items():
            hit = sorted(k for k, mode in policy.items() if mode == "exclude" and k in keys)
            if hit:
                out[op] = hit
        return out

    def low_bits_detail(self) -> dict[str, dict[str, LowBits]]:
        """For every op and sub-8-bit width (``LOW_BIT_KEYS``; weightless ops: activation widths only),
        whether the target runs it natively, as an upcast, on the host, or excludes it. Derived from the
        native entries and fallback rules (the same resolution the latency model prices with), so it
        cannot disagree with the predicted latency; declared modes are checked against it at load."""
        cached = self.__dict__.get("_low_bits_cache")
        if cached is None:
            cached = {op: {key: self._derive_low_bits(op, key) for key in _low_bit_keys(op)} for op in OPS}
            object.__setattr__(self, "_low_bits_cache", cached)
        return cached

    @property
    def low_bits(self) -> dict[str, dict[str, str]]:
        """``{op: {"w2": mode, "w4": mode, "a4": mode}}``, modes from :data:`LOW_BIT_MODES`: what a search
        for this target prices a sub-8-bit width as (see :meth:`low_bits_detail`)."""
        return {op: {k: r.mode for k, r in keys.items()} for op, keys in self.low_bits_detail().items()}

    def low_bits_summary(self) -> dict[str, Any]:
        """JSON-ready record of :attr:`low_bits` for a run's config: ``{"target", "policy", "detail"}``."""
        return {"target": self.name, "policy": self.low_bits,
                "detail": {op: {k: str(r) for k, r in keys.items()} for op, keys in self.low_bits_detail().items()}}

    def low_bits_lines(self) -> list[str]:
        """One line per op kind: how each sub-8-bit width is priced on this target."""
        out = [f"sub-8-bit widths on {self.name} (native: priced with its gain; upcast: priced as the wider "
               f"container the exporter writes; host: priced as a host fallback; excluded: not searchable):"]
        for op, keys in self.low_bits_detail().items():
            out.append(f"  {op:<7} " + "; ".join(str(r) for r in keys.values()))
        return out

    def _derive_low_bits(self, op: str, key: str) -> LowBits:
        declared = self.low_bits_declared.get(op, {}).get(key)
        if declared == "exclude":
            return LowBits(op, key, "exclude", declared=True)
        bits = int(key[1:])
        unit = self.units[self.primary_unit]
        entries = [e for e in unit.native if op in e.ops]
        if op in WEIGHTLESS_OPS:
            probes = [(bits, bits)]
        elif key.startswith("w"):  # at every integer activation width the unit runs this op at
            acts = {e.a_bits for e in entries}
            probes = [(bits, a) for a in sorted({a for a in acts if a <= 16} or acts)] or [(bits, 8)]
        else:  # with the narrowest weights of 8 bits or more the unit runs this op at
            probes = [(min((e.w_bits for e in entries if e.w_bits >= 8), default=8), bits)]
        outcomes: set[str] = set()
        runs_as: set[str] = set()
        for w, a in probes:
            if self.excluded(op, w, a):  # e.g. w4 probed at a4 where a4 is excluded
                continue
            for k, stride, cout in _PROBE_SHAPES:
                if op == "fc" and (k, stride) != (1, 1):
                    continue
                exe = self.resolve_precision(op, w, a, k=k, stride=stride, cout=cout)
                on_unit = exe.unit == self.primary_unit
                same = exe.w_bits == bits if key.startswith("w") else exe.a_bits == bits
                if on_unit and same:
                    outcomes.add("native")
                    continue
                outcomes.add("upcast" if on_unit else "host")
                runs_as.add(precision_key(exe.w_bits, exe.a_bits) if on_unit
                            else f"{exe.unit} {precision_key(exe.w_bits, exe.a_bits)}")
        if not outcomes:  # every way to run it is excluded
            return LowBits(op, key, "exclude", declared=declared is not None)
        mode = next(m for m in ("native", "upcast", "host") if m in outcomes)
        when = ""
        if mode == "native":
            native = [e for e in entries
                      if (e.w_bits == bits if key.startswith("w") else e.a_bits == bits)]
            if runs_as or any(e.condition() for e in native):
                when = "; ".join(e.prec + (f" where {e.condition()}" if e.condition() else "") for e in native)
        return LowBits(op, key, mode, when, tuple(sorted(runs_as)), declared=declared is not None)

    def _where(self) -> str:
        return self.path or repr(self.name)


def _low_bit_keys(op: str) -> tuple[str, ...]:
    return tuple(k for k in LOW_BIT_KEYS if op not in WEIGHTLESS_OPS or k.startswith("a"))


# -- loading ------------------------------------------------------------------------

def known_profiles() -> list[str]:
    """Names of the latency target profiles shipped with qnas."""
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def load_profile(name_or_path: "str | Path | TargetProfile") -> TargetProfile:
    """Load a shipped latency target profile by name (``"edgetpu"``) or a user's profile JSON by path."""
    if isinstance(name_or_path, TargetProfile):
        return name_or_path
    text = str(name_or_path)
    looks_like_path = isinstance(name_or_path, Path) or text.endswith(".json") or "/" in text or "\\" in text
    if not looks_like_path:
        path = PROFILES_DIR / f"{text}.json"
        if not path.is_file():
            raise UnknownTargetError(
                f"unknown latency target {text!r}; known latency targets: {', '.join(known_profiles())} "
                f"(or pass the path of a profile JSON file)")
        return _load_file(path)
    path = Path(text)
    if not path.is_file():
        raise UnknownTargetError(
            f"latency target profile file {text!r} does not exist; pass an existing profile JSON path or one of: "
            f"{', '.join(known_profiles())}")
    return _load_file(path)


def _load_file(path: Path) -> TargetProfile:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LatencyTableError(f"cannot read latency target profile {path}: {_one_line(exc)}; check the file") from exc
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LatencyTableError(
            f"latency target profile {path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            f"fix the file or copy a shipped profile from {PROFILES_DIR}") from exc
    return _Parser(str(path)).parse(data)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _lookup_fallback(table: dict[str, str], w: int, a: int) -> tuple[str, str | None]:
    for key in (precision_key(w, a), f"a{a}", f"w{w}", "*"):
        if key in table:
            return key, table[key]
    return precision_key(w, a), None


def _apply_target(key: str, target: str, w: int, a: int) -> tuple[int, int]:
    if _W_RE.match(target):
        return int(target[1:]), a
    if _A_RE.match(target):
        return w, int(target[1:])
    return parse_precision_key(target)


class _Parser:
    """Validates the raw JSON; every problem is a one-line LatencyTableError."""

    def __init__(self, origin: str):
        self.origin = origin
        self.facts: dict[str, Fact] = {}
        self.version = SCHEMA_VERSION

    def v2(self, field_path: str) -> None:
        """Refuse a version 2 field in a file that says it is version 1."""
        if self.version < 2:
            raise self.fail(f"'{field_path}' needs schema_version 2 (the file says {self.version})",
                            "set schema_version to 2")

    def fail(self, what: str, fix: str) -> LatencyTableError:
        return LatencyTableError(f"latency target profile {self.origin}: {what}; {fix}")

    def get(self, obj: dict, key: str, path: str, required: bool = True) -> Any:
        if key not in obj:
            if required:
                raise self.fail(f"missing field '{path}{key}'",
                                f"add it (see {PROFILES_DIR / 'edgetpu.json'} for the schema)")
            return None
        return obj[key]

    def fact(self, obj: dict, key: str, path: str, kind: str, required: bool = True) -> Any:
        raw = self.get(obj, key, path, required)
        if raw is None:
            return None
        full = f"{path}{key}"
        self.meta_check(raw, full)
        value = self.check(raw["value"], kind, f"{full}.value")
        self.facts[full] = Fact(value, raw["source"], raw["confidence"])
        return value

    def check(self, value: Any, kind: str, where: str) -> Any:
        def positive(v: Any, w: str, allow_zero: bool = False) -> float:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                    or (v == 0 and not allow_zero):  # NaN/Infinity parse from JSON and would price every arch NaN
                raise self.fail(f"'{w}' is {v!r}", f"use a finite {'non-negative' if allow_zero else 'positive'} number")
            return float(v)

        if kind == "positive":
            return positive(value, where)
        if kind == "nonneg":
            return positive(value, where, allow_zero=True)
        if kind == "bool":
            if not isinstance(value, bool):
                raise self.fail(f"'{where}' is {value!r}", "use true or false")
            return value
        if kind in ("prec_map", "op_map"):
            if not isinstance(value, dict) or not value:
                raise self.fail(f"'{where}' is not a non-empty object", "map keys to positive numbers")
            out = {}
            for k, v in value.items():
                if kind == "prec_map" and not _PREC_RE.match(k):
                    raise self.fail(f"'{where}' has key {k!r}", "use precision keys like 'w8a8'")
                if kind == "op_map" and k not in OPS:
                    raise self.fail(f"'{where}' has key {k!r}", f"use op names: {', '.join(OPS)}")
                out[k] = positive(v, f"{where}.{k}")
            if kind == "op_map":
                for op, like in OP_DEFAULTS.items():
                    if op not in out and like in out:
                        out[op] = out[like]
                missing = [op for op in OPS if op not in out]
                if missing:
                    raise self.fail(f"missing field '{where}.{missing[0]}'", f"give an efficiency for every op: {', '.join(OPS)}")
            return out
        raise AssertionError(kind)

    def parse(self, data: Any) -> TargetProfile:
        if not isinstance(data, dict):
            raise self.fail("top level is not a JSON object", "the file must hold one profile object")
        unknown = sorted(set(data) - PROFILE_KEYS)
        if unknown:  # a misspelt key would silently not apply
            raise self.fail(f"unknown key(s) {unknown}", f"use only {', '.join(sorted(PROFILE_KEYS))}")
        version = self.get(data, "schema_version", "")
        if isinstance(version, bool) or version not in READABLE_SCHEMA_VERSIONS:
            readable = " and ".join(map(str, READABLE_SCHEMA_VERSIONS))
            raise self.fail(f"schema_version is {version!r}, this qnas reads {readable}",
                            "convert the profile or upgrade qnas")
        self.version = version
        name = self.get(data, "name", "")
        if not isinstance(name, str) or not name:
            raise self.fail("'name' is not a non-empty string", "give the profile a name")
        description = data.get("description", "")
        units_raw = self.get(data, "units", "")
        if not isinstance(units_raw, dict) or not units_raw:
            raise self.fail("'units' is not a non-empty object", "describe at least one compute unit")
        units = {uname: self.parse_unit(uname, u) for uname, u in units_raw.items()}
        primary = self.get(data, "primary_unit", "")
        if primary not in units:
            raise self.fail(f"primary_unit {primary!r} is not one of the units ({', '.join(units)})",
                            "name a unit defined under 'units'")
        host = data.get("host_unit")
        if host is not None and host not in units:
            raise self.fail(f"host_unit {host!r} is not one of the units ({', '.join(units)})",
                            "name a unit defined under 'units' or drop host_unit")
        sticky = self.fact(data, "sticky_host_fallback", "", "bool")
        overhead = self.fact(data, "per_inference_overhead_ms", "", "nonneg")
        transfer = None
        if "transfer" in data:
            t = self.get(data, "transfer", "")
            if not isinstance(t, dict):
                raise self.fail("'transfer' is not an object", "give bytes_per_s, latency_ms and include_model_io facts")
            transfer = Transfer(self.fact(t, "bytes_per_s", "transfer.", "positive"),
                                self.fact(t, "latency_ms", "transfer.", "nonneg"),
                                self.fact(t, "include_model_io", "transfer.", "bool"))
        declared = self.parse_low_bits(data) if "low_bits" in data else {}
        profile = TargetProfile(name=name, description=description, primary_unit=primary, host_unit=host,
                                sticky_host_fallback=sticky, per_inference_overhead_ms=overhead,
                                transfer=transfer, units=units, facts=self.facts,
                                path=None if self.origin.startswith("<") else self.origin,
                                schema_version=version, low_bits_declared=declared)
        self.check_resolution(profile)
        self.check_low_bits(profile)
        return profile

    def parse_low_bits(self, data: dict) -> dict[str, dict[str, str]]:
        self.v2("low_bits")
        raw = data["low_bits"]
        self.meta_check(raw, "low_bits")
        value = raw["value"]
        if not isinstance(value, dict) or not value:
            raise self.fail("'low_bits.value' is not a non-empty object",
                            'map op kinds (or "*") to a mode or to {"w4": mode, "a4": mode}')
        modes = ", ".join(LOW_BIT_MODES)
        out: dict[str, dict[str, str]] = {}
        # "*" first, then the op kinds it stands for, each overriding what came before
        for op in sorted(value, key=lambda o: o != "*"):
            rule = value[op]
            if op != "*" and op not in OPS:
                raise self.fail(f"'low_bits.value' has key {op!r}", f"use op names ({', '.join(OPS)}) or '*'")
            if isinstance(rule, str):
                rule = dict.fromkeys(LOW_BIT_KEYS, rule)
            if not isinstance(rule, dict) or not rule:
                raise self.fail(f"'low_bits.value.{op}' is {rule!r}", f"give a mode ({modes}) or an object of them")
            for key, mode in rule.items():
                if key not in LOW_BIT_KEYS:
                    raise self.fail(f"'low_bits.value.{op}' has key {key!r}",
                                    f"use the sub-8-bit widths {', '.join(LOW_BIT_KEYS)}")
                if mode not in LOW_BIT_MODES:
                    raise self.fail(f"'low_bits.value.{op}.{key}' is {mode!r}", f"use one of {modes}")
                for target in (OPS if op == "*" else (op,)):
                    if key in _low_bit_keys(target):
                        out.setdefault(target, {})[key] = mode
        self.facts["low_bits"] = Fact(value, raw["source"], raw["confidence"])
        return out

    def check_low_bits(self, profile: TargetProfile) -> None:
        """A declared mode (other than "exclude") must be what the fallback rules price."""
        detail = profile.low_bits_detail()
        for op, keys in profile.low_bits_declared.items():
            for key, mode in keys.items():
                derived = detail[op][key]
                if mode != "exclude" and derived.mode != mode:
                    raise self.fail(
                        f"low_bits says {op} {key} is {mode!r} but the native entries and fallback rules price it as "
                        f"{derived.mode!r} ({derived})",
                        "make the fallback rules match (an upcast maps to a wider width on the same unit, 'host' "
                        "sends it to the host unit) or correct low_bits")

    def parse_unit(self, uname: str, raw: Any) -> UnitProfile:
        p = f"units.{uname}."
        if not isinstance(raw, dict):
            raise self.fail(f"'units.{uname}' is not an object", "describe the unit's throughput, bandwidth and precisions")
        unknown = sorted(set(raw) - UNIT_KEYS)
        if unknown:
            raise self.fail(f"'units.{uname}' has unknown key(s) {unknown}", f"use only {', '.join(sorted(UNIT_KEYS))}")
        peak = self.fact(raw, "peak_macs_per_s", p, "prec_map")
        eff = self.fact(raw, "efficiency", p, "op_map")
        prec_eff = self.fact(raw, "precision_efficiency", p, "prec_map", required=False) or {}
        bw = self.fact(raw, "bandwidth_bytes_per_s", p, "positive")
        overhead = self.fact(raw, "overhead_ms", p, "nonneg")
        native_raw = self.get(raw, "native", p)
        native = self.parse_native(uname, native_raw, peak)
        fb_raw = self.get(raw, "fallback", p)
        fallback = self.parse_fallback(uname, fb_raw)
        out_bytes = None
        if "output_bytes_per_elem" in raw:
            self.v2(f"{p}output_bytes_per_elem")
            out_bytes = self.fact(raw, "output_bytes_per_elem", p, "positive")
        energy = None
        if "energy" in raw:
            self.v2(f"{p}energy")
            energy = self.parse_energy(uname, raw["energy"], peak)
        return UnitProfile(uname, raw.get("description", ""), peak, eff, prec_eff, bw, overhead, native, fallback,
                           out_bytes, energy)

    def parse_energy(self, uname: str, raw: Any, peak: dict[str, float]) -> UnitEnergy:
        where = f"units.{uname}.energy"
        self.meta_check(raw, where)
        value = raw["value"]
        if not isinstance(value, dict) or "compute_w" not in value or "pj_per_byte" not in value:
            raise self.fail(f"'{where}.value' lacks compute_w or pj_per_byte",
                            'write {"compute_w": watts, "pj_per_byte": pJ, "static_w": watts}')
        bad = [k for k in value if k not in ("compute_w", "pj_per_byte", "static_w")]
        if bad:
            raise self.fail(f"'{where}.value' has key {bad[0]!r}", "use compute_w, pj_per_byte and static_w")
        cw = value["compute_w"]
        if isinstance(cw, dict):
            for k in cw:
                if k != "*" and k not in peak:
                    raise self.fail(f"'{where}.value.compute_w' has key {k!r}",
                                    f"use compute precisions of units.{uname}.peak_macs_per_s or '*'")
            compute_w = {k: self.check(v, "nonneg", f"{where}.value.compute_w.{k}") for k, v in cw.items()}
        else:
            compute_w = {"*": self.check(cw, "nonneg", f"{where}.value.compute_w")}
        energy = UnitEnergy(compute_w, self.check(value["pj_per_byte"], "nonneg", f"{where}.value.pj_per_byte"),
                            self.check(value.get("static_w", 0.0), "nonneg", f"{where}.value.static_w"))
        self.facts[where] = Fact(value, raw["source"], raw["confidence"])
        return energy

    def parse_native(self, uname: str, raw: Any, peak: dict[str, float]) -> tuple[NativeEntry, ...]:
        where = f"units.{uname}.native"
        self.meta_check(raw, where)
        value = raw["value"]
        if not isinstance(value, list) or not value:
            raise self.fail(f"'{where}.value' is not a non-empty list", 'list entries like {"prec": "w8a8"}')
        entries = []
        for i, e in enumerate(value):
            w = f"{where}.value[{i}]"
            if not isinstance(e, dict) or "prec" not in e:
                raise self.fail(f"missing field '{w}.prec'", 'write entries like {"prec": "w8a8"}')
            prec = e["prec"]
            if not isinstance(prec, str) or not _PREC_RE.match(prec):
                raise self.fail(f"'{w}.prec' is {prec!r}", "use a precision key like 'w8a8'")
            wb, ab = parse_precision_key(prec)
            if wb not in W_GRID or ab not in A_GRID:
                raise self.fail(f"'{w}.prec' {prec!r} is off the bit-width grid",
                                f"use w in {W_GRID} and a in {A_GRID}")
            compute = e.get("compute", prec)
            if compute not in peak:
                raise self.fail(f"missing field 'units.{uname}.peak_macs_per_s.value.{compute}' (used by {w})",
                                "give a peak throughput for every compute precision")
            ops = tuple(e.get("ops", OPS))
            bad = [o for o in ops if o not in OPS]
            if bad:
                raise self.fail(f"'{w}.ops' has {bad[0]!r}", f"use op names: {', '.join(OPS)}")
            ops += tuple(op for op, like in OP_DEFAULTS.items() if op not in ops and like in ops)
            k = tuple(e["k"]) if "k" in e else None
            stride = tuple(e["stride"]) if "stride" in e else None
            min_cout = e.get("min_cout")
            overhead = 0.0
            if "weight_overhead" in e:
                self.v2(f"{w}.weight_overhead")
                overhead = self.check(e["weight_overhead"], "nonneg", f"{w}.weight_overhead")
            entries.append(NativeEntry(prec, wb, ab, compute, ops, k, stride, min_cout, overhead))
        self.facts[where] = Fact(value, raw["source"], raw["confidence"])
        return tuple(entries)

    def parse_fallback(self, uname: str, raw: Any) -> dict[str, str]:
        where = f"units.{uname}.fallback"
        self.meta_check(raw, where)
        value = raw["value"]
        if not isinstance(value, dict):
            raise self.fail(f"'{where}.value' is not an object", 'map precisions to what they run as, e.g. {"w4": "w8"}')
        for key, target in value.items():
            if not isinstance(target, str):
                raise self.fail(f"'{where}.value.{key}' is {target!r}", "use a precision key or 'host'")
            if target == HOST:
                ok = key == "*" or _PREC_RE.match(key) or _W_RE.match(key) or _A_RE.match(key)
            elif _PREC_RE.match(key) or key == "*":
                ok = bool(_PREC_RE.match(target))
            elif _W_RE.match(key):
                ok = bool(_W_RE.match(target))
            elif _A_RE.match(key):
                ok = bool(_A_RE.match(target))
            else:
                ok = False
            if not ok:
                raise self.fail(f"bad fallback rule '{where}.value.{key}': {target!r}",
                                "map 'w4a8'->'w8a8', 'a4'->'a8', 'w2'->'w4', or any key -> 'host'")
        self.facts[where] = Fact(dict(value), raw["source"], raw["confidence"])
        return dict(value)

    def meta_check(self, raw: Any, where: str) -> None:
        if not isinstance(raw, dict) or "value" not in raw:
            raise self.fail(f"missing field '{where}.value'",
                            'write it as {"value": ..., "source": "...", "confidence": "rough"}')
        for meta in ("source", "confidence"):
            if not isinstance(raw.get(meta), str) or not raw[meta].strip():
                raise self.fail(f"missing field '{where}.{meta}'", f"give every fact a non-empty {meta} string")
        if raw["confidence"] not in CONFIDENCE_LEVELS:
            raise self.fail(f"'{where}.confidence' is {raw['confidence']!r}", f"use one of {', '.join(CONFIDENCE_LEVELS)}")

    def check_resolution(self, profile: TargetProfile) -> None:
        """Every (op, w, a) on the grid must resolve to a native precision, from the
        primary unit and from the host unit; errors name the broken rule."""
        start_units = [profile.primary_unit] + ([profile.host_unit] if profile.host_unit else [])
        for unit in start_units:
            for op in OPS:
                for k, stride, cout in ((1, 1, 64), (3, 2, 16)):
                    for w in W_GRID:
                        for a in A_GRID:
                            if profile.excluded(op, w, a):
                                continue
                            profile.fallback_chain(op, w, a, k=k, stride=stride, cout=cout, unit=unit)


#: Deprecated names (``DeviceProfile``: the profile of a latency target, not of a torch device).
__getattr__ = module_getattr(__name__, {"DeviceProfile": ("TargetProfile", lambda: TargetProfile)})
