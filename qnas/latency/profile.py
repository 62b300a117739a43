"""Target profiles: what a latency target executes natively and how fast.

A latency target (``--target``) is the hardware/runtime a network's latency is
predicted for, named by its profile (``edgetpu``, ``cpu-ort`` ...); it is not
the torch device a search trains on (``--torch-device``).

A profile is a versioned JSON data file (``schema_version`` 1) loaded with
:mod:`json` (never pickle). Every number in it is a *fact*::

    {"value": ..., "source": "where it comes from", "confidence": "rough"}

so each figure carries its citation and how much to trust it.

Layout (see ``profiles/edgetpu.json`` for a complete example)::

    schema_version            1
    name, description         strings
    primary_unit              the unit a layer is first offered to
    host_unit                 optional: the unit "host" fallbacks run on
    sticky_host_fallback      fact, bool: once one layer falls back to the host,
                              every later layer runs there too (Edge TPU)
    per_inference_overhead_ms fact, float: fixed cost per inference
    transfer                  optional fact {bytes_per_s, latency_ms, include_model_io}:
                              cost of moving an activation between units
    units.<name>:
      peak_macs_per_s         fact {precision key: MAC/s}, e.g. {"w8a8": 2e12}
      efficiency              fact {op: fraction of peak}, all six ops
      precision_efficiency    optional fact {precision key: extra factor}
      bandwidth_bytes_per_s   fact, float
      overhead_ms             fact, float: per-layer fixed cost
      native                  fact, list of {"prec": "w4a16", "compute": "w16a16",
                              "ops": [...], "k": [1], "stride": [1], "min_cout": 33}
                              (compute defaults to prec; ops defaults to all;
                              weights are moved at the native entry's w bits, so
                              a weight-only format like CoreML's w4a16 moves
                              4-bit weights but runs fp16 MACs)
      fallback                fact {key: target}: what a precision the unit cannot
                              execute runs as. Keys: "w4a8" (exact pair), "a4"
                              (any weight bits), "w2" (any activation bits), "*"
                              (anything). Targets: a key of the same kind
                              ("w8a8", "a8", "w8") or "host".

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
from typing import Any, NamedTuple

from qnas.errors import LatencyTableError, QnasError, UnknownTargetError
from qnas.latency._compat import module_getattr
from qnas.quant.plan import OP_KINDS, WEIGHTLESS_OPS

SCHEMA_VERSION = 1
OPS = OP_KINDS  # the layer kinds a profile prices (defined with the plan)
W_GRID: tuple[int, ...] = (2, 4, 8, 16, 32)
A_GRID: tuple[int, ...] = (4, 8, 16, 32)
CONFIDENCE_LEVELS: tuple[str, ...] = ("rough", "estimated", "documented", "measured")
HOST = "host"

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

    def _where(self) -> str:
        return self.path or repr(self.name)


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
        version = self.get(data, "schema_version", "")
        if version != SCHEMA_VERSION:
            raise self.fail(f"schema_version is {version!r}, this qnas reads {SCHEMA_VERSION}",
                            "convert the profile or upgrade qnas")
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
        profile = TargetProfile(name=name, description=description, primary_unit=primary, host_unit=host,
                                sticky_host_fallback=sticky, per_inference_overhead_ms=overhead,
                                transfer=transfer, units=units, facts=self.facts,
                                path=None if self.origin.startswith("<") else self.origin,
                                schema_version=version)
        self.check_resolution(profile)
        return profile

    def parse_unit(self, uname: str, raw: Any) -> UnitProfile:
        p = f"units.{uname}."
        if not isinstance(raw, dict):
            raise self.fail(f"'units.{uname}' is not an object", "describe the unit's throughput, bandwidth and precisions")
        peak = self.fact(raw, "peak_macs_per_s", p, "prec_map")
        eff = self.fact(raw, "efficiency", p, "op_map")
        prec_eff = self.fact(raw, "precision_efficiency", p, "prec_map", required=False) or {}
        bw = self.fact(raw, "bandwidth_bytes_per_s", p, "positive")
        overhead = self.fact(raw, "overhead_ms", p, "nonneg")
        native_raw = self.get(raw, "native", p)
        native = self.parse_native(uname, native_raw, peak)
        fb_raw = self.get(raw, "fallback", p)
        fallback = self.parse_fallback(uname, fb_raw)
        return UnitProfile(uname, raw.get("description", ""), peak, eff, prec_eff, bw, overhead, native, fallback)

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
            entries.append(NativeEntry(prec, wb, ab, compute, ops, k, stride, min_cout))
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
                            profile.fallback_chain(op, w, a, k=k, stride=stride, cout=cout, unit=unit)


#: Deprecated names (``DeviceProfile``: the profile of a latency target, not of a torch device).
__getattr__ = module_getattr(__name__, {"DeviceProfile": ("TargetProfile", lambda: TargetProfile)})
