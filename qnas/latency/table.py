"""Latency lookup tables: per-layer milliseconds keyed by shape AND bit widths.

Schema (version 1)
------------------
A table maps a layer key to its batch-1 latency in milliseconds. The key is
:meth:`LayerSpec.key() <qnas.quant.plan.LayerSpec.key>`::

    (op, cin, cout, hw, k, stride, groups, w_bits, a_bits)

``op``      one of conv, dwconv, pwconv, fc, add, pool
``cin``     input channels (features for fc)
``cout``    output channels (classes for fc; = cin for add/pool)
``hw``      input spatial size (square; 1 for fc)
``k``       kernel size (1 for pwconv, fc, add, pool)
``stride``  stride (1 for pwconv, fc, add, pool)
``groups``  conv groups (= cin for dwconv, else 1)
``w_bits``  weight bits; for add/pool the bits of the tensors they run on
``a_bits``  bits of the activations the layer consumes; a residual add and the
            pool carry the a_bits of the layer that consumes their output
            (``qnas.latency.base.inherit_weightless_bits``); 32 = float
``ms``      latency in ms: finite, >= 0
``mj``      optional: the layer's energy per inference in millijoules, finite, >= 0. A table
            whose every entry has one prices energy too (``--objectives ...,energy``,
            ``--energy-mj``): a fallback scales it as it scales ms, and a key priced by
            ``defaults`` takes the same name from the optional ``energy_defaults`` field

JSON (``.json``)::

    {"schema": "qnas-latency-table", "version": 1,
     "meta": {"device": "cpu-ort", "runtime": "...", "threads": 1,
              "created": "2025-01-01T00:00:00+00:00", "qnas_version": "0.1.0",
              "notes": "..."},
     "entries": [{"op": "pwconv", "cin": 16, "cout": 48, "hw": 8, "k": 1,
                  "stride": 1, "groups": 1, "w_bits": 4, "a_bits": 8,
                  "ms": 0.0123}, ...]}

CSV (``.csv``): a header row with exactly the columns
``op,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms`` (optionally ``mj``) and one row per entry.
Lines starting with ``#`` are comments; qnas writes the metadata as one
``# meta: {json}`` comment line before the header, and reads it back when
present. Extra columns are ignored.

Defaults and fallback rules (optional, still version 1)
--------------------------------------------------------
A published or hand-made table rarely has every key a search space produces
(no stem, classifier, pool or residual-add rows; some bit pairs missing). Two
optional top-level fields price those keys instead of failing::

    "defaults":  {"stem": 0.30, "head": 0.08, "pool": 0.001, "add": 0.0005},
    "fallbacks": [{"a_bits": 4, "use_a_bits": 8},
                  {"op": "fc", "w_bits": 2, "use_w_bits": 4, "scale": 1.0, "note": "..."}]

A key is priced by, in this order:

1. its own entry;
2. a ``fallbacks`` rule: a rule *matches* a key when every key field it names
   (``op``, ``cin`` ... ``a_bits``) has that value (a rule naming none matches
   every key); the key is then looked up with each ``use_<field>`` replaced, and
   that entry's ms times ``scale`` (default 1) is the price. Rules are tried in
   file order; a key they lead to that has no entry may itself be rewritten by
   the rules, up to :data:`MAX_FALLBACK_STEPS` rules in a chain (shortest chain
   first). ``{"a_bits": 4, "use_a_bits": 8}`` prices a missing A4 layer at its
   A8 entry; ``{"use_w_bits": 32, "use_a_bits": 32}`` prices every bit width at
   a float table's entry;
3. a ``defaults`` value in ms: first by the layer's role in a qnas network (its
   name: ``stem``, ``head`` -- the classifier --, ``mix``, ``pre_head``), then by
   its op (``conv``, ``dwconv``, ``pwconv``, ``fc``, ``add``, ``pool``, ``mul``).
   A default is a fixed cost whatever the layer's shape and bits.

Every price obtained by 2 or 3 is said: ``qnas latency predict`` counts those
layers (and ``--breakdown`` marks each), ``qnas latency check-table`` and a
search print how many keys of the space they price. A key none of 1-3 prices
is *missing*: ``qnas latency check-table`` lists them all, and a search or a
prediction with the table refuses before its first evaluation. In a CSV table
the two fields are ``# defaults: {json}`` and ``# fallbacks: [json]`` comment
lines (``# energy_defaults: {json}`` likewise). The schema version stays 1: a reader that ignores the two fields (qnas
before them) prices every entry the same and fails on the keys they would have
filled, it never prices anything differently.

Published tables in other formats (APQ's BitFusion dict, nn-Meter kernel CSVs,
any CSV with shape columns) are converted by :mod:`qnas.latency.importers`
(``qnas latency import``).

All ``meta`` fields are optional; unknown ones are kept. ``device`` is the
latency target the table was measured on (a target profile name such as
``cpu-ort``, or a CPU model), never a torch device; the field keeps its old
name (:data:`TARGET_META_KEY`), and a file that calls it ``target`` is read
as well. Tables are plain
data, read with the json/csv modules only (never pickle) and never
downloaded: measure one on the target with ``qnas latency measure``
(:func:`qnas.latency.layer_measure.measure_space_table`) or write one from
your own target's measurements in the format above and load it with
:func:`load_table`.
"""
from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, get_args

from qnas.errors import LatencyTableError
from qnas.latency._compat import deprecated_device_property, target_or_device, warn_renamed
from qnas.latency.base import LatencyModel, LayerCost, as_layers, inherit_weightless_bits
from qnas.quant.plan import LayerSpec, OpKind

if TYPE_CHECKING:
    from qnas.arch import Arch
    from qnas.space import SearchSpace

SCHEMA = "qnas-latency-table"
VERSION = 1
KEY_FIELDS = ("op", "cin", "cout", "hw", "k", "stride", "groups", "w_bits", "a_bits")
COLUMNS = KEY_FIELDS + ("ms",)
#: optional column: the layer's energy per inference in millijoules (every entry needs one for the table
#: to price energy; ``energy_defaults`` then price what ``defaults`` price)
ENERGY_COLUMN = "mj"
OPS = tuple(get_args(OpKind))
#: The meta field that names the latency target a table was measured on. It keeps the name it had before
#: the latency target and the torch device were told apart (``device``): bench/latency_fidelity.py and qnas
#: releases before the rename read only this field, so writing ``target`` instead would make them miss it.
#: :func:`meta_target` reads either spelling.
TARGET_META_KEY = "device"
META_FIELDS = (TARGET_META_KEY, "runtime", "threads", "created", "qnas_version", "notes")

Key = tuple  # (op, cin, cout, hw, k, stride, groups, w_bits, a_bits)

_FIX = "re-measure it with `qnas latency measure` or fix the file"
_KEY_INDEX = {f: i for i, f in enumerate(KEY_FIELDS)}
#: Layer roles a table default may name: the name of that layer in a qnas network plan.
DEFAULT_ROLES = ("stem", "head", "mix", "pre_head")
#: Every name a ``defaults`` field may carry: a role, then the op kinds.
DEFAULT_NAMES = DEFAULT_ROLES + OPS
#: The most fallback rules one lookup chains (see the module docstring).
MAX_FALLBACK_STEPS = 4
_RULE_KEYS = KEY_FIELDS + tuple(f"use_{f}" for f in KEY_FIELDS) + ("scale", "note")
_RULES_DOC = "see the schema in qnas/latency/table.py"


def _qnas_version() -> str:
    try:
        from qnas import __version__

        return str(__version__)
    except Exception:  # pragma: no cover - only when qnas is half-installed
        return "unknown"


def _stamped(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Meta ``fields`` (file field names) over the defaults, with ``created`` (UTC, ISO 8601) and
    ``qnas_version`` filled in; a ``target`` field is stored under :data:`TARGET_META_KEY`."""
    fields = dict(fields)
    if "target" in fields and TARGET_META_KEY not in fields:
        fields[TARGET_META_KEY] = fields.pop("target")
    meta: dict[str, Any] = {TARGET_META_KEY: None, "runtime": None, "threads": None,
                            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            "qnas_version": _qnas_version(), "notes": ""}
    meta.update(fields)
    return meta


def default_meta(target: str | None = None, *, device: str | None = None, **kw: Any) -> dict[str, Any]:
    """Metadata with ``created`` (UTC, ISO 8601) and ``qnas_version`` filled in. ``target``: the latency
    target the table is measured on (stored as the ``device`` field, :data:`TARGET_META_KEY`); ``device=``
    is its deprecated keyword; further keywords are meta fields (``runtime``, ``threads``, ``notes`` ...)."""
    target = target_or_device("default_meta", target, device)
    return _stamped({**kw, TARGET_META_KEY: target} if target is not None else kw)


def meta_target(meta: Mapping[str, Any]) -> str | None:
    """The latency target a table's ``meta`` names (field ``device``, or ``target`` in a hand-written file)."""
    return meta.get(TARGET_META_KEY) or meta.get("target")


def format_key(key: Key) -> str:
    return "(" + ", ".join(f"{f}={v!r}" if f == "op" else f"{f}={v}" for f, v in zip(KEY_FIELDS, key)) + ")"


def _as_key(layer_or_key: Any) -> Key:
    if isinstance(layer_or_key, LayerSpec) or hasattr(layer_or_key, "key") and callable(layer_or_key.key):
        return tuple(layer_or_key.key())
    return tuple(layer_or_key)


def _int_field(v: Any, name: str, where: str, lo: int = 1) -> int:
    if isinstance(v, bool):
        raise LatencyTableError(f"{where}: {name}={v!r} is not an integer; {_FIX}")
    if isinstance(v, str):
        v = v.strip()
        try:
            v = int(v)
        except ValueError:
            try:
                f = float(v)
            except ValueError:
                raise LatencyTableError(f"{where}: {name}={v!r} is not an integer; {_FIX}") from None
            v = f
    if isinstance(v, float):
        if not v.is_integer():
            raise LatencyTableError(f"{where}: {name}={v!r} is not an integer; {_FIX}")
        v = int(v)
    if not isinstance(v, int):
        raise LatencyTableError(f"{where}: {name}={v!r} is not an integer; {_FIX}")
    if v < lo:
        raise LatencyTableError(f"{where}: {name}={v} must be >= {lo}; {_FIX}")
    return v


def _ms_field(v: Any, where: str, name: str = "ms") -> float:
    """A latency (``name`` ms) or an energy (``mj``) value: a finite number >= 0."""
    what = "latencies" if name == "ms" else "energies"
    if isinstance(v, bool):
        raise LatencyTableError(f"{where}: {name}={v!r} is not a number; {_FIX}")
    try:
        ms = float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        raise LatencyTableError(f"{where}: {name}={v!r} is not a number; {_FIX}") from None
    if not math.isfinite(ms) or ms < 0:
        raise LatencyTableError(f"{where}: {name}={ms} is invalid, {what} must be finite and >= 0; {_FIX}")
    return ms


def _check_key(key: Any, where: str) -> Key:
    if not isinstance(key, tuple) or len(key) != len(KEY_FIELDS):
        raise LatencyTableError(f"{where}: key {key!r} is not a 9-tuple {KEY_FIELDS}; {_FIX}")
    op = key[0]
    if op not in OPS:
        raise LatencyTableError(f"{where}: op={op!r} is not one of {list(OPS)}; {_FIX}")
    return (op,) + tuple(_int_field(v, f, where) for f, v in zip(KEY_FIELDS[1:], key[1:]))


def _rule_value(name: str, v: Any, where: str) -> Any:
    if name == "op":
        if v not in OPS:
            raise LatencyTableError(f"{where}: op={v!r} is not one of {list(OPS)}; {_RULES_DOC}")
        return v
    return _int_field(v, name, where)


@dataclass(frozen=True)
class FallbackRule:
    """Price a key that has no entry at another key's entry: a key whose fields equal ``match`` is
    looked up with the fields of ``use`` replaced, its ms times ``scale``."""

    match: tuple[tuple[str, Any], ...]
    use: tuple[tuple[str, Any], ...]
    scale: float = 1.0
    note: str = ""

    @classmethod
    def from_dict(cls, d: Any, where: str = "fallback rule") -> "FallbackRule":
        if isinstance(d, FallbackRule):
            return d
        if not isinstance(d, Mapping):
            raise LatencyTableError(f"{where} is a {type(d).__name__}, expected an object such as "
                                    f'{{"a_bits": 4, "use_a_bits": 8}}; {_RULES_DOC}')
        unknown = sorted(set(d) - set(_RULE_KEYS))
        if unknown:
            raise LatencyTableError(f"{where} has unknown field(s) {unknown}; a rule names key fields to match "
                                    f"({', '.join(KEY_FIELDS)}), use_<field> values and optionally scale/note")
        match = tuple((f, _rule_value(f, d[f], where)) for f in KEY_FIELDS if f in d)
        use = tuple((f, _rule_value(f, d[f"use_{f}"], where)) for f in KEY_FIELDS if f"use_{f}" in d)
        if not use:
            raise LatencyTableError(f"{where} has no use_<field>: say what a matching key is priced at, "
                                    f'e.g. {{"a_bits": 4, "use_a_bits": 8}}; {_RULES_DOC}')
        scale = d.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
            raise LatencyTableError(f"{where}: scale={scale!r} must be a finite number > 0")
        note = d.get("note", "")
        if not isinstance(note, str):
            raise LatencyTableError(f"{where}: note must be a string, got {type(note).__name__}")
        return cls(match, use, float(scale), note)

    def matches(self, key: Key) -> bool:
        return all(key[_KEY_INDEX[f]] == v for f, v in self.match)

    def apply(self, key: Key) -> Key:
        k = list(key)
        for f, v in self.use:
            k[_KEY_INDEX[f]] = v
        return tuple(k)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dict(self.match)
        d.update({f"use_{f}": v for f, v in self.use})
        if self.scale != 1.0:
            d["scale"] = self.scale
        if self.note:
            d["note"] = self.note
        return d

    def describe(self) -> str:
        """``a_bits=4 -> a_bits=8`` (``any -> ...`` for a rule that matches every key; ``x0.9`` for a scale)."""
        src = ", ".join(f"{f}={v}" for f, v in self.match) or "any"
        dst = ", ".join(f"{f}={v}" for f, v in self.use)
        return f"{src} -> {dst}" + (f" x{self.scale:g}" if self.scale != 1.0 else "")


@dataclass(frozen=True)
class Pricing:
    """How a table prices one layer key: ``how`` is ``entry`` (its own), ``fallback`` (``priced_key``'s
    entry, by the rules in ``note``) or ``default`` (a fixed cost, named in ``note``)."""

    ms: float
    how: str
    key: Key
    priced_key: Key | None
    note: str = ""
    scale: float = 1.0  # the fallback rules' product: what ``priced_key``'s entry (and its energy) is scaled by


def _check_defaults(defaults: Any, where: str) -> dict[str, float]:
    if not isinstance(defaults, Mapping):
        raise LatencyTableError(f"{where}: defaults must be an object of name -> ms "
                                f'(e.g. {{"pool": 0.001}}), got {type(defaults).__name__}')
    out = {}
    for name, ms in defaults.items():
        if name not in DEFAULT_NAMES:
            raise LatencyTableError(f"{where}: default {name!r} names no layer role or op; use one of "
                                    f"{list(DEFAULT_NAMES)}")
        out[name] = _ms_field(ms, f"{where} default {name!r}")
    return out


def _role(layer: Any) -> str | None:
    name = getattr(layer, "name", None)
    return name if name in DEFAULT_ROLES else None


_UNSET = object()


@dataclass
class TableCoverage:
    """Which distinct layer keys (of a search space or an arch) a table prices, and how."""

    table: "LatencyTable"
    n_keys: int
    by_entry: int = 0
    by_fallback: list = field(default_factory=list)  # [(layer, Pricing)]
    by_default: list = field(default_factory=list)  # [(layer, Pricing)]
    missing: list = field(default_factory=list)  # [layer]

    @property
    def complete(self) -> bool:
        return not self.missing

    def rule_counts(self) -> dict[str, int]:
        """How many keys each fallback chain / default priced, most first."""
        counts: dict[str, int] = {}
        for _, p in self.by_fallback + self.by_default:
            counts[p.note] = counts.get(p.note, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

    def summary(self, what: str = "the search space") -> str:
        """One line: how many keys of ``what`` are priced and how."""
        priced = self.n_keys - len(self.missing)
        head = (f"latency table {self.table.name} prices {priced} of {self.n_keys} distinct layer keys of {what}"
                if self.missing else
                f"latency table {self.table.name} prices all {self.n_keys} distinct layer keys of {what}")
        how = [f"{self.by_entry} by entry"]
        if self.by_fallback:
            how.append(f"{len(self.by_fallback)} by fallback rule")
        if self.by_default:
            how.append(f"{len(self.by_default)} by default")
        if self.missing:
            how.append(f"{len(self.missing)} missing")
        return f"{head} ({', '.join(how)})"

    def missing_lines(self, limit: int | None = 50) -> list[str]:
        """One line per missing key (with a layer that has it), the first ``limit`` (None/0: all),
        then how many more there are."""
        shown = self.missing if not limit else self.missing[:limit]
        out = [f"  {format_key(_as_key(l))}" + (f"   e.g. layer {l.name}" if getattr(l, "name", None) else "")
               for l in shown]
        if len(self.missing) > len(shown):
            out.append(f"  ... and {len(self.missing) - len(shown)} more")
        return out

    def refusal(self, what: str = "the search space", hint: str | None = None) -> str:
        """The one-line error for an incomplete table: the count, the first keys, where to see all."""
        first = "; ".join(format_key(_as_key(l)) for l in self.missing[:2])
        more = f" and {len(self.missing) - 2} more" if len(self.missing) > 2 else ""
        hint = hint or f"list every one with `qnas latency check-table [--space SPACE.yaml] {self.table.name}`"
        return (f"latency table {self.table.name} cannot price {len(self.missing)} of the {self.n_keys} distinct "
                f"layer keys of {what} (no entry, fallback rule or default), e.g. {first}{more}; {hint}, then "
                "measure them, import a table that has them, or give the table defaults/fallbacks "
                "(schema in qnas/latency/table.py)")


class LatencyTable(Mapping):
    """Per-layer latencies (ms) keyed by ``LayerSpec.key()``, plus metadata.

    >>> table = load_table("my-target.json")
    >>> table.lookup(layer)            # LatencyTableError naming the key if nothing prices it
    >>> table.price(layer)             # Pricing (entry / fallback / default) or None
    >>> table.save("copy.csv")         # refuses to overwrite unless overwrite=True

    ``entries`` is a mapping (or iterable of pairs) from a key tuple or a
    ``LayerSpec`` to ms; ``defaults`` (name -> ms) and ``fallbacks`` (rules, as
    dicts or :class:`FallbackRule`) price keys without an entry (module
    docstring). As a mapping it holds the entries only (``in``, ``[]``,
    ``len``); :meth:`lookup` and :meth:`price` apply the rules. It is
    read-only; build new tables with :meth:`with_entries`, :meth:`with_rules`
    or :meth:`merge`."""

    def __init__(self, entries: Mapping | Iterable[tuple[Any, float]] = (), meta: Mapping[str, Any] | None = None,
                 source: str | None = None, *, defaults: Mapping[str, float] | None = None,
                 fallbacks: Iterable[Any] = (), energy: Mapping[Any, float] | None = None,
                 energy_defaults: Mapping[str, float] | None = None):
        if source is None:  # a new table: stamp created / qnas_version unless given
            self.meta: dict[str, Any] = _stamped(meta or {})
        else:  # a loaded table keeps its own metadata (no invented "created")
            self.meta = {f: None for f in META_FIELDS}
            self.meta.update(meta or {})
        self.source = source
        self._ms: dict[Key, float] = {}
        items = entries.items() if isinstance(entries, Mapping) else entries
        where = source or "latency table"
        for k, ms in items:
            key = _check_key(_as_key(k), where)
            v = _ms_field(ms, f"{where} entry {format_key(key)}")
            if key in self._ms and self._ms[key] != v:
                raise LatencyTableError(f"{where}: key {format_key(key)} appears twice with different ms "
                                        f"({self._ms[key]} and {v}); keep one entry per key")
            self._ms[key] = v
        self.defaults: dict[str, float] = _check_defaults(defaults or {}, where)
        if isinstance(fallbacks, (str, bytes, Mapping)) or not isinstance(fallbacks, Iterable):
            raise LatencyTableError(f"{where}: fallbacks must be a list of rules, got {type(fallbacks).__name__}; "
                                    f"{_RULES_DOC}")
        self.fallbacks: tuple[FallbackRule, ...] = tuple(
            FallbackRule.from_dict(r, f"{where} fallbacks[{i}]") for i, r in enumerate(fallbacks))
        self._priced: dict[tuple[Key, str | None], Pricing | None] = {}
        self._mj: dict[Key, float] = {}
        for k, mj in (energy or {}).items():
            key = _as_key(k)
            if key not in self._ms:
                raise LatencyTableError(f"{where}: energy given for key {format_key(key)}, which has no ms entry")
            self._mj[key] = _ms_field(mj, f"{where} entry {format_key(key)}", ENERGY_COLUMN)
        self.energy_defaults: dict[str, float] = _check_defaults(energy_defaults or {}, where)

    # ---- Mapping ---------------------------------------------------------------
    def __getitem__(self, k: Any) -> float:
        return self._ms[_as_key(k)]

    def __contains__(self, k: Any) -> bool:
        try:
            return _as_key(k) in self._ms
        except TypeError:
            return False

    def __iter__(self) -> Iterator[Key]:
        return iter(self._ms)

    def __len__(self) -> int:
        return len(self._ms)

    def __eq__(self, other: Any) -> bool:
        return (isinstance(other, LatencyTable) and self._ms == other._ms and self.defaults == other.defaults
                and self.fallbacks == other.fallbacks and self._mj == other._mj
                and self.energy_defaults == other.energy_defaults)

    __hash__ = None  # type: ignore[assignment]

    @property
    def name(self) -> str:
        return self.source or (f"for {self.target}" if self.target else "(in memory)")

    @property
    def target(self) -> str | None:
        """The latency target the table was measured on (its ``meta``), if it says."""
        return meta_target(self.meta)

    #: Deprecated name of :attr:`target`.
    device = deprecated_device_property()

    def __repr__(self) -> str:
        rules = (f", {len(self.defaults)} defaults, {len(self.fallbacks)} fallback rules"
                 if self.defaults or self.fallbacks else "")
        return f"LatencyTable({len(self)} entries{rules}, target={self.target!r}, source={self.source!r})"

    @property
    def has_energy(self) -> bool:
        """Whether every entry carries its energy (``mj``): only then can the table price energy."""
        return bool(self._ms) and len(self._mj) == len(self._ms)

    def energies(self) -> dict[Key, float]:
        """The entries' energies in mJ (those that have one)."""
        return dict(self._mj)

    def energy(self, layer: Any) -> float:
        """Energy (mJ) of one layer, priced as :meth:`lookup` prices its latency: its entry's ``mj``, a
        fallback entry's times the rules' scale, or an ``energy_defaults`` value where a default priced it."""
        p = self.resolve(layer)
        if p.how == "default":
            name = p.note.removeprefix("default ")
            if name not in self.energy_defaults:
                raise LatencyTableError(f"latency table {self.name} prices {format_key(p.key)} by its default "
                                        f"{name!r} but has no energy default for it; add \"energy_defaults\": "
                                        f"{{\"{name}\": MJ}} to the table")
            return self.energy_defaults[name]
        assert p.priced_key is not None
        if p.priced_key not in self._mj:
            raise LatencyTableError(f"latency table {self.name} has no energy (mj) for entry "
                                    f"{format_key(p.priced_key)}; give every entry an mj value to predict energy")
        return self._mj[p.priced_key] * p.scale

    @property
    def has_rules(self) -> bool:
        """Whether the table carries defaults or fallback rules."""
        return bool(self.defaults or self.fallbacks)

    # ---- lookups -----------------------------------------------------------------
    def price(self, layer: Any) -> Pricing | None:
        """How one layer (a ``LayerSpec`` or a key tuple) is priced: by its entry, a fallback rule or a
        default (module docstring); None when nothing prices it. A default by role needs the
        ``LayerSpec`` (its name)."""
        key = _as_key(layer)
        role = _role(layer)
        memo = self._priced.get((key, role), _UNSET)
        if memo is not _UNSET:
            return memo  # type: ignore[return-value]
        found = self._price(key, role)
        self._priced[(key, role)] = found
        return found

    def _price(self, key: Key, role: str | None) -> Pricing | None:
        ms = self._ms.get(key)
        if ms is not None:
            return Pricing(ms, "entry", key, key)
        if self.fallbacks:
            found = self._fallback(key)
            if found is not None:
                return found
        for name in ((role,) if role else ()) + (key[0],):
            if name in self.defaults:
                return Pricing(self.defaults[name], "default", key, None, f"default {name}")
        return None

    def _fallback(self, key: Key) -> Pricing | None:
        """The shortest chain of fallback rules (rule order breaking ties) from ``key`` to an entry."""
        frontier: list[tuple[Key, float, tuple[FallbackRule, ...]]] = [(key, 1.0, ())]
        seen = {key}
        for _ in range(MAX_FALLBACK_STEPS):
            nxt = []
            for k, scale, path in frontier:
                for rule in self.fallbacks:
                    if not rule.matches(k):
                        continue
                    new = rule.apply(k)
                    if new in seen:
                        continue
                    seen.add(new)
                    s, p = scale * rule.scale, path + (rule,)
                    if new in self._ms:
                        return Pricing(self._ms[new] * s, "fallback", key, new,
                                       "fallback " + "; ".join(r.describe() for r in p), s)
                    nxt.append((new, s, p))
            if not nxt:
                break
            frontier = nxt
        return None

    def resolve(self, layer: Any) -> Pricing:
        """:meth:`price`, or :class:`LatencyTableError` naming the key when nothing prices it."""
        found = self.price(layer)
        if found is None:
            key = _as_key(layer)
            what = f"layer {layer.name!r} " if isinstance(layer, LayerSpec) else ""
            rules = ", fallback rule or default" if self.has_rules else ""
            raise LatencyTableError(
                f"latency table {self.name} has no entry{rules} for {what}key {format_key(key)}; measure it with "
                "`qnas latency measure` (qnas.latency.layer_measure), import a table that covers this search space, "
                "or give the table a default or fallback rule (schema in qnas/latency/table.py)")
        return found

    def lookup(self, layer: Any) -> float:
        """ms of one layer (a ``LayerSpec`` or a key tuple) by its entry, a fallback rule or a default;
        :class:`LatencyTableError` if none prices it."""
        return self.resolve(layer).ms

    def coverage(self, layers: Iterable[Any]) -> TableCoverage:
        """How the distinct keys of ``layers`` (e.g. :func:`space_layer_keys`) are priced."""
        cov = TableCoverage(self, 0)
        seen: set = set()
        for l in layers:
            k = (_as_key(l), _role(l))
            if k in seen:
                continue
            seen.add(k)
            cov.n_keys += 1
            p = self.price(l)
            if p is None:
                cov.missing.append(l)
            elif p.how == "entry":
                cov.by_entry += 1
            elif p.how == "fallback":
                cov.by_fallback.append((l, p))
            else:
                cov.by_default.append((l, p))
        return cov

    def unpriced(self, layers: Iterable[Any]) -> list:
        """The layers (or keys) of ``layers`` that neither an entry, a fallback rule nor a default prices,
        first occurrence of each key."""
        return self.coverage(layers).missing

    def missing(self, layers: Iterable[Any]) -> list:
        """The layers (or keys) of ``layers`` that have no entry of their own (defaults and fallback rules
        aside), first occurrence of each key; see :meth:`unpriced` for what nothing prices."""
        seen: set[Key] = set()
        out = []
        for l in layers:
            k = _as_key(l)
            if k not in self._ms and k not in seen:
                seen.add(k)
                out.append(l)
        return out

    # ---- building ----------------------------------------------------------------
    def with_entries(self, entries: Mapping | Iterable[tuple[Any, float]]) -> "LatencyTable":
        """A copy with ``entries`` added (replacing existing keys)."""
        new = LatencyTable(entries, source=self.source)
        merged = dict(self._ms)
        merged.update(new._ms)
        energy = {k: v for k, v in self._mj.items() if k not in new._ms}  # a replaced entry loses its old energy
        return LatencyTable(merged, meta=self.meta, source=self.source, defaults=self.defaults,
                            fallbacks=self.fallbacks, energy=energy, energy_defaults=self.energy_defaults)

    def with_rules(self, defaults: Mapping[str, float] | None = None, fallbacks: Iterable[Any] | None = None, *,
                   replace: bool = False) -> "LatencyTable":
        """A copy with ``defaults`` added to (``replace``: instead of) the table's, and ``fallbacks``
        appended to (``replace``: instead of) its rules."""
        d = dict(defaults or {}) if replace else {**self.defaults, **(defaults or {})}
        rules = [FallbackRule.from_dict(r, f"{self.name} fallbacks[{i}]") for i, r in enumerate(fallbacks or ())]
        f = tuple(rules) if replace else self.fallbacks + tuple(r for r in rules if r not in self.fallbacks)
        return LatencyTable(self._ms, meta=self.meta, source=self.source, defaults=d, fallbacks=f,
                            energy=self._mj, energy_defaults=self.energy_defaults)

    def merge(self, other: "LatencyTable", prefer: str = "other", allow_mixed_targets: bool = False, *,
              allow_mixed_devices: bool | None = None) -> "LatencyTable":
        """A new table with the entries of both; on a shared key ``prefer`` ("other" or "self") wins.

        Merging tables measured on different latency targets is refused (a mixed
        table prices no real target) unless ``allow_mixed_targets``
        (``allow_mixed_devices`` is its deprecated name)."""
        if allow_mixed_devices is not None:
            warn_renamed("LatencyTable.merge(allow_mixed_devices=...)", "allow_mixed_targets=...")
            allow_mixed_targets = allow_mixed_targets or allow_mixed_devices
        if prefer not in ("other", "self"):
            raise LatencyTableError(f"merge(prefer={prefer!r}) is not valid; use 'other' or 'self'")
        if not isinstance(other, LatencyTable):
            raise LatencyTableError(f"cannot merge a {type(other).__name__} into a latency table; load it with load_table")
        t1, t2 = self.target, other.target
        if t1 and t2 and t1 != t2 and not allow_mixed_targets:
            raise LatencyTableError(f"cannot merge a table measured on latency target {t2!r} into one for {t1!r}; "
                                    "merge tables of the same target or pass allow_mixed_targets=True")
        a, b = (self._ms, other._ms) if prefer == "other" else (other._ms, self._ms)
        merged = dict(a)
        merged.update(b)
        lo, hi = (self, other) if prefer == "other" else (other, self)
        energy = {k: v for k, v in lo._mj.items() if k not in hi._ms}  # each entry keeps its own table's energy
        energy.update(hi._mj)
        meta = dict(self.meta)
        if not t1 and t2:
            meta.pop("target", None)
            meta[TARGET_META_KEY] = t2
        note = f"merged with {other.source or 'a table'} ({len(other)} entries)"
        meta["notes"] = f"{meta.get('notes') or ''}; {note}".lstrip("; ")
        first, second = (self, other) if prefer == "other" else (other, self)
        defaults = {**first.defaults, **second.defaults}
        fallbacks = second.fallbacks + tuple(r for r in first.fallbacks if r not in second.fallbacks)
        return LatencyTable(merged, meta=meta, source=None, defaults=defaults, fallbacks=fallbacks, energy=energy,
                            energy_defaults={**first.energy_defaults, **second.energy_defaults})

    # ---- serialisation -------------------------------------------------------------
    def sorted_items(self) -> list[tuple[Key, float]]:
        return sorted(self._ms.items(), key=lambda kv: kv[0])

    def _rules_dict(self) -> dict[str, Any]:
        """The ``defaults`` / ``fallbacks`` fields, only those the table has (files without them are unchanged)."""
        out: dict[str, Any] = {}
        if self.defaults:
            out["defaults"] = dict(self.defaults)
        if self.fallbacks:
            out["fallbacks"] = [r.to_dict() for r in self.fallbacks]
        if self.energy_defaults:
            out["energy_defaults"] = dict(self.energy_defaults)
        return out

    def _row(self, k: Key, ms: float) -> dict[str, Any]:
        row = dict(zip(COLUMNS, k + (ms,)))
        if k in self._mj:
            row[ENERGY_COLUMN] = self._mj[k]
        return row

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": VERSION, "meta": dict(self.meta), **self._rules_dict(),
                "entries": [self._row(k, ms) for k, ms in self.sorted_items()]}

    def to_json(self) -> str:
        head = json.dumps({"schema": SCHEMA, "version": VERSION, "meta": self.meta, **self._rules_dict()}, indent=1,
                          allow_nan=False, default=str)
        rows = [json.dumps(self._row(k, ms), allow_nan=False) for k, ms in self.sorted_items()]
        body = ",\n  ".join(rows)
        return head[:-2] + ',\n "entries": [' + ("\n  " + body + "\n " if rows else "") + "]\n}\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        buf.write("# " + SCHEMA + f" version {VERSION}\n")
        buf.write("# meta: " + json.dumps(self.meta, allow_nan=False, default=str) + "\n")
        for name, value in self._rules_dict().items():
            buf.write(f"# {name}: " + json.dumps(value, allow_nan=False) + "\n")
        w = csv.writer(buf, lineterminator="\n")
        energy = bool(self._mj)
        w.writerow(COLUMNS + ((ENERGY_COLUMN,) if energy else ()))
        for k, ms in self.sorted_items():
            w.writerow(list(k) + [repr(ms)] + ([repr(self._mj[k]) if k in self._mj else ""] if energy else []))
        return buf.getvalue()

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write JSON or CSV (by suffix) atomically; refuses to overwrite unless ``overwrite``."""
        from qnas.quant.checkpoint import atomic_write

        path = Path(path)
        fmt = _format_of(path)
        if path.exists() and not overwrite:
            raise LatencyTableError(f"{path} already exists; choose another path or pass overwrite=True (--force)")
        text = self.to_json() if fmt == "json" else self.to_csv()
        return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=True)

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        return load_table(path)


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise LatencyTableError(f"{path}: unknown latency-table format {suffix or '(no suffix)'!r}; use a .json or .csv file")
    return suffix[1:]


def load_table(path: str | Path) -> LatencyTable:
    """Read a JSON or CSV latency table (by suffix); :class:`LatencyTableError` naming the file on any problem."""
    path = Path(path)
    fmt = _format_of(path)
    if not path.is_file():
        raise LatencyTableError(f"latency table not found: {path}; measure one with `qnas latency measure` or check the path")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise LatencyTableError(f"cannot read latency table {path} ({type(e).__name__}); check the file") from None
    return _parse_json(text, str(path)) if fmt == "json" else _parse_csv(text, str(path))


def _parse_json(text: str, where: str) -> LatencyTable:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise LatencyTableError(f"{where} is not valid JSON (line {e.lineno}: {e.msg}); {_FIX}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        got = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise LatencyTableError(f"{where} is not a qnas latency table (schema={got!r}, expected {SCHEMA!r}); "
                                "see qnas/latency/table.py for the format")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise LatencyTableError(f"{where}: version={version!r} is not an integer; set \"version\": {VERSION}")
    if version > VERSION:
        raise LatencyTableError(f"{where} is latency-table version {version}, this qnas reads up to {VERSION}; upgrade qnas")
    if version < 1:
        raise LatencyTableError(f"{where}: version={version} is not valid; set \"version\": {VERSION}")
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise LatencyTableError(f"{where}: meta must be an object, got {type(meta).__name__}; {_FIX}")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise LatencyTableError(f"{where}: entries must be a list of objects with {list(COLUMNS)}; {_FIX}")
    pairs = []
    energy: dict[Key, float] = {}
    for i, e in enumerate(entries):
        w = f"{where} entry {i}"
        if not isinstance(e, dict):
            raise LatencyTableError(f"{w} is a {type(e).__name__}, expected an object with {list(COLUMNS)}; {_FIX}")
        missing = [c for c in COLUMNS if c not in e]
        if missing:
            raise LatencyTableError(f"{w} lacks field(s) {missing}; every entry needs {list(COLUMNS)}")
        pairs.append((_check_key(tuple(e[f] for f in KEY_FIELDS), w), _ms_field(e["ms"], w)))
        if e.get(ENERGY_COLUMN) is not None:
            energy[pairs[-1][0]] = _ms_field(e[ENERGY_COLUMN], w, ENERGY_COLUMN)
    fallbacks = doc.get("fallbacks", [])
    if not isinstance(fallbacks, list):
        raise LatencyTableError(f"{where}: fallbacks must be a list of rules, got {type(fallbacks).__name__}; "
                                f"{_RULES_DOC}")
    return LatencyTable(pairs, meta=meta, source=where, defaults=doc.get("defaults") or {}, fallbacks=fallbacks,
                        energy=energy, energy_defaults=doc.get("energy_defaults") or {})


def _parse_csv(text: str, where: str) -> LatencyTable:
    meta: dict[str, Any] = {}
    rules: dict[str, Any] = {}
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("#"):
            for name, kind in (("defaults", dict), ("fallbacks", list), ("energy_defaults", dict)):
                if s.startswith(f"# {name}:"):
                    try:
                        rules[name] = json.loads(s[len(f"# {name}:"):])
                    except json.JSONDecodeError:
                        raise LatencyTableError(f"{where} line {n}: the '# {name}:' comment is not valid JSON; "
                                                f"fix it or delete the line ({_RULES_DOC})") from None
                    if not isinstance(rules[name], kind):
                        raise LatencyTableError(f"{where} line {n}: the '# {name}:' comment must be a JSON "
                                                f"{'object' if kind is dict else 'list'}; {_RULES_DOC}")
            if s.startswith("# meta:"):
                try:
                    m = json.loads(s[len("# meta:"):])
                except json.JSONDecodeError:
                    raise LatencyTableError(f"{where} line {n}: the '# meta:' comment is not valid JSON; "
                                            "fix it or delete the line") from None
                if not isinstance(m, dict):
                    raise LatencyTableError(f"{where} line {n}: the '# meta:' comment must be a JSON object; fix or delete it")
                meta = m
            continue
        if s:
            lines.append((n, line))
    if not lines:
        raise LatencyTableError(f"{where} has no CSV header; the first row must be {','.join(COLUMNS)}")
    try:
        rows = list(csv.reader([l for _, l in lines]))
    except csv.Error as e:
        raise LatencyTableError(f"{where} is not valid CSV ({e}); {_FIX}") from None
    header = [h.strip() for h in rows[0]]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise LatencyTableError(f"{where} lacks column(s) {missing}; the header row must be {','.join(COLUMNS)}")
    col = {c: header.index(c) for c in COLUMNS}
    mj_col = header.index(ENERGY_COLUMN) if ENERGY_COLUMN in header else None
    pairs = []
    energy: dict[Key, float] = {}
    for (n, _), row in zip(lines[1:], rows[1:]):
        w = f"{where} line {n}"
        if len(row) < len(header):
            raise LatencyTableError(f"{w} has {len(row)} fields, the header has {len(header)}; {_FIX}")
        key = (row[col["op"]].strip(),) + tuple(row[col[f]] for f in KEY_FIELDS[1:])
        pairs.append((_check_key(key, w), _ms_field(row[col["ms"]], w)))
        if mj_col is not None and row[mj_col].strip():
            energy[pairs[-1][0]] = _ms_field(row[mj_col], w, ENERGY_COLUMN)
    return LatencyTable(pairs, meta=meta, source=where, defaults=rules.get("defaults") or {},
                        fallbacks=rules.get("fallbacks") or [], energy=energy,
                        energy_defaults=rules.get("energy_defaults") or {})


class TableLatencyModel(LatencyModel):
    """Sum of per-layer table entries (add/pool at their consumer's bits, see
    :func:`~qnas.latency.base.inherit_weightless_bits`); a key without an entry is priced by the table's
    fallback rules or defaults, said in each :class:`~qnas.latency.base.LayerCost`'s ``note``. Its
    :attr:`target` is the one the table's ``meta`` names."""

    kind = "table"

    def __init__(self, table: "LatencyTable | str | Path"):
        self.table = table if isinstance(table, LatencyTable) else load_table(table)

    @classmethod
    def from_file(cls, path: str | Path) -> "TableLatencyModel":
        return cls(load_table(path))

    @property
    def target(self) -> str:
        return self.table.target or "table"

    def layer_ms(self, layer: LayerSpec) -> float:
        return self.table.lookup(layer)

    def breakdown(self, plan: Any) -> list[LayerCost]:
        """Per-layer costs: ``unit`` "table", ``w_bits``/``a_bits`` the bits of the entry that priced the
        layer (another entry's, for a fallback), ``native`` False and ``note`` set when a fallback rule or a
        default priced it."""
        out = []
        for l in inherit_weightless_bits(as_layers(plan)):
            p = self.table.price(l)
            if p is None:  # nothing in the table: layer_ms raises (or, in a subclass, measures it)
                ms = float(self.layer_ms(l))
                p = self.table.price(l) or Pricing(ms, "entry", l.key(), l.key())
            wb, ab = (p.priced_key[7], p.priced_key[8]) if p.priced_key is not None else (l.w_bits, l.a_bits)
            out.append(LayerCost(l, float(p.ms), "table", wb, ab, f"w{wb}a{ab}", p.how == "entry", "table",
                                 note=p.note))
        return out

    @property
    def has_energy(self) -> bool:
        """Whether the table gives energy (an ``mj`` on every entry): then ``--objectives ...,energy`` and
        energy budgets work with it."""
        return self.table.has_energy

    def energy_breakdown(self, plan: Any) -> list[float]:
        """Energy (mJ) of each layer, in :meth:`breakdown`'s order."""
        return [float(self.table.energy(l)) for l in inherit_weightless_bits(as_layers(plan))]

    def predict_energy(self, plan: Any) -> float:
        """Batch-1 energy of the whole network in mJ (tables whose entries carry ``mj``)."""
        return float(sum(self.energy_breakdown(plan)))

    def vectorized(self, space: "SearchSpace"):
        """A :class:`~qnas.latency.vectorized.VectorizedTablePredictor` of this table over ``space``."""
        from qnas.latency.vectorized import VectorizedTablePredictor

        return VectorizedTablePredictor(space, self.layer_ms)


def plan_layer_keys(plans: Iterable[Any]) -> list[LayerSpec]:
    """Distinct layers (by key, first occurrence) of NetworkPlans / layer lists, add/pool bits inherited."""
    seen: dict[Key, LayerSpec] = {}
    for plan in plans:
        for l in inherit_weightless_bits(as_layers(plan)):
            seen.setdefault(l.key(), l)
    return list(seen.values())


def space_layer_keys(space: "SearchSpace", archs: Iterable["Arch"] | None = None) -> list[LayerSpec]:
    """The distinct layers (by key) of ``archs`` of ``space``, or of every arch of the space.

    With ``archs=None`` the set is enumerated analytically from the space's
    geometry (:class:`~qnas.latency.vectorized.SpaceGeometry`): stem and head
    at every (resolution, width, bits), each block position's three convs at
    every (resolution, width, op, w_bits, a_bits), residual adds at every bit
    width of a layer that can consume them, and the pool. Add/pool layers
    carry inherited bits, exactly the keys :class:`TableLatencyModel` looks up."""
    if archs is not None:
        return plan_layer_keys(a if hasattr(a, "layers") else space.plan(a) for a in archs)
    from qnas.latency.vectorized import SpaceGeometry

    seen: dict[Key, LayerSpec] = {}
    for _, _, layer in SpaceGeometry(space).slots():
        seen.setdefault(layer.key(), layer)
    return list(seen.values())


def table_of(model: Any) -> LatencyTable | None:
    """The latency table that prices ``model``'s layers without measuring missing ones: a
    :class:`TableLatencyModel`'s, or that of a hybrid's table base; None for any other model (analytic,
    or ``measured``, which times what its table lacks)."""
    seen = 0
    while model is not None and seen < 8:
        if getattr(model, "kind", None) == "measured":
            return None
        if isinstance(model, TableLatencyModel):
            return model.table
        model, seen = getattr(model, "base", None), seen + 1
    return None


def check_space_coverage(model: Any, space: "SearchSpace", *, log: Any = None,
                         what: str = "the search space") -> TableCoverage | None:
    """Before a search evaluates anything: refuse (:class:`LatencyTableError`, one line with the count,
    the first keys and the command that lists them all) a table ``model`` that cannot price every
    distinct layer key ``space`` can produce; ``log`` (e.g. ``print``) gets one line saying how many keys
    fallback rules and defaults price. Models without a table (analytic, measured) pass: returns None."""
    table = table_of(model)
    if table is None:
        return None
    cov = table.coverage(space_layer_keys(space))
    if cov.missing:
        raise LatencyTableError(cov.refusal(what))
    if log is not None and (cov.by_fallback or cov.by_default):
        log(cov.summary(what))
    return cov


def check_plan_coverage(model: Any, plan: Any, *, what: str = "this arch") -> TableCoverage | None:
    """:func:`check_space_coverage` for the layers of one network ``plan`` (``qnas latency predict``)."""
    table = table_of(model)
    if table is None:
        return None
    cov = table.coverage(plan_layer_keys([plan]))
    if cov.missing:
        raise LatencyTableError(cov.refusal(what))
    return cov


__all__ = ["COLUMNS", "DEFAULT_NAMES", "ENERGY_COLUMN", "DEFAULT_ROLES", "FallbackRule", "KEY_FIELDS", "LatencyTable", "Pricing",
           "SCHEMA", "TARGET_META_KEY", "TableCoverage", "TableLatencyModel", "VERSION", "check_plan_coverage",
           "check_space_coverage", "load_table", "meta_target", "plan_layer_keys", "space_layer_keys", "table_of"]
