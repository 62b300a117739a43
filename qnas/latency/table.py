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

JSON (``.json``)::

    {"schema": "qnas-latency-table", "version": 1,
     "meta": {"device": "cpu-ort", "runtime": "...", "threads": 1,
              "created": "2025-01-01T00:00:00+00:00", "qnas_version": "0.1.0",
              "notes": "..."},
     "entries": [{"op": "pwconv", "cin": 16, "cout": 48, "hw": 8, "k": 1,
                  "stride": 1, "groups": 1, "w_bits": 4, "a_bits": 8,
                  "ms": 0.0123}, ...]}

CSV (``.csv``): a header row with exactly the columns
``op,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms`` and one row per entry.
Lines starting with ``#`` are comments; qnas writes the metadata as one
``# meta: {json}`` comment line before the header, and reads it back when
present. Extra columns are ignored.

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
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, get_args

from qnas.errors import LatencyTableError
from qnas.latency._compat import deprecated_device_property, target_or_device, warn_renamed
from qnas.latency.base import LatencyModel, as_layers, inherit_weightless_bits
from qnas.quant.plan import LayerSpec, OpKind

if TYPE_CHECKING:
    from qnas.arch import Arch
    from qnas.space import SearchSpace

SCHEMA = "qnas-latency-table"
VERSION = 1
KEY_FIELDS = ("op", "cin", "cout", "hw", "k", "stride", "groups", "w_bits", "a_bits")
COLUMNS = KEY_FIELDS + ("ms",)
OPS = tuple(get_args(OpKind))
#: The meta field that names the latency target a table was measured on. It keeps the name it had before
#: the latency target and the torch device were told apart (``device``): bench/latency_fidelity.py and qnas
#: releases before the rename read only this field, so writing ``target`` instead would make them miss it.
#: :func:`meta_target` reads either spelling.
TARGET_META_KEY = "device"
META_FIELDS = (TARGET_META_KEY, "runtime", "threads", "created", "qnas_version", "notes")

Key = tuple  # (op, cin, cout, hw, k, stride, groups, w_bits, a_bits)

_FIX = "re-measure it with `qnas latency measure` or fix the file"


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


def _ms_field(v: Any, where: str) -> float:
    if isinstance(v, bool):
        raise LatencyTableError(f"{where}: ms={v!r} is not a number; {_FIX}")
    try:
        ms = float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError):
        raise LatencyTableError(f"{where}: ms={v!r} is not a number; {_FIX}") from None
    if not math.isfinite(ms) or ms < 0:
        raise LatencyTableError(f"{where}: ms={ms} is invalid, latencies must be finite and >= 0; {_FIX}")
    return ms


def _check_key(key: Any, where: str) -> Key:
    if not isinstance(key, tuple) or len(key) != len(KEY_FIELDS):
        raise LatencyTableError(f"{where}: key {key!r} is not a 9-tuple {KEY_FIELDS}; {_FIX}")
    op = key[0]
    if op not in OPS:
        raise LatencyTableError(f"{where}: op={op!r} is not one of {list(OPS)}; {_FIX}")
    return (op,) + tuple(_int_field(v, f, where) for f, v in zip(KEY_FIELDS[1:], key[1:]))


class LatencyTable(Mapping):
    """Per-layer latencies (ms) keyed by ``LayerSpec.key()``, plus metadata.

    >>> table = load_table("my-target.json")
    >>> table.lookup(layer)            # LatencyTableError naming the key if missing
    >>> table.save("copy.csv")         # refuses to overwrite unless overwrite=True

    ``entries`` is a mapping (or iterable of pairs) from a key tuple or a
    ``LayerSpec`` to ms. It is a read-only mapping; build new tables with
    :meth:`with_entries` or :meth:`merge`."""

    def __init__(self, entries: Mapping | Iterable[tuple[Any, float]] = (), meta: Mapping[str, Any] | None = None,
                 source: str | None = None):
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
        return isinstance(other, LatencyTable) and self._ms == other._ms

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
        return f"LatencyTable({len(self)} entries, target={self.target!r}, source={self.source!r})"

    # ---- lookups -----------------------------------------------------------------
    def lookup(self, layer: Any) -> float:
        """ms of one layer (a ``LayerSpec`` or a key tuple); :class:`LatencyTableError` if absent."""
        key = _as_key(layer)
        try:
            return self._ms[key]
        except KeyError:
            what = f"layer {layer.name!r} " if isinstance(layer, LayerSpec) else ""
            raise LatencyTableError(
                f"latency table {self.name} has no entry for {what}key {format_key(key)}; measure it with "
                "`qnas latency measure` (qnas.latency.layer_measure) or import a table that covers this search space"
            ) from None

    def missing(self, layers: Iterable[Any]) -> list:
        """The layers (or keys) of ``layers`` that have no entry, first occurrence of each key."""
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
        return LatencyTable(merged, meta=self.meta, source=self.source)

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
        meta = dict(self.meta)
        if not t1 and t2:
            meta.pop("target", None)
            meta[TARGET_META_KEY] = t2
        note = f"merged with {other.source or 'a table'} ({len(other)} entries)"
        meta["notes"] = f"{meta.get('notes') or ''}; {note}".lstrip("; ")
        return LatencyTable(merged, meta=meta, source=None)

    # ---- serialisation -------------------------------------------------------------
    def sorted_items(self) -> list[tuple[Key, float]]:
        return sorted(self._ms.items(), key=lambda kv: kv[0])

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": VERSION, "meta": dict(self.meta),
                "entries": [dict(zip(COLUMNS, k + (ms,))) for k, ms in self.sorted_items()]}

    def to_json(self) -> str:
        head = json.dumps({"schema": SCHEMA, "version": VERSION, "meta": self.meta}, indent=1, allow_nan=False,
                          default=str)
        rows = [json.dumps(dict(zip(COLUMNS, k + (ms,))), allow_nan=False) for k, ms in self.sorted_items()]
        body = ",\n  ".join(rows)
        return head[:-2] + ',\n "entries": [' + ("\n  " + body + "\n " if rows else "") + "]\n}\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        buf.write("# " + SCHEMA + f" version {VERSION}\n")
        buf.write("# meta: " + json.dumps(self.meta, allow_nan=False, default=str) + "\n")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(COLUMNS)
        for k, ms in self.sorted_items():
            w.writerow(list(k) + [repr(ms)])
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
    for i, e in enumerate(entries):
        w = f"{where} entry {i}"
        if not isinstance(e, dict):
            raise LatencyTableError(f"{w} is a {type(e).__name__}, expected an object with {list(COLUMNS)}; {_FIX}")
        missing = [c for c in COLUMNS if c not in e]
        if missing:
            raise LatencyTableError(f"{w} lacks field(s) {missing}; every entry needs {list(COLUMNS)}")
        pairs.append((_check_key(tuple(e[f] for f in KEY_FIELDS), w), _ms_field(e["ms"], w)))
    return LatencyTable(pairs, meta=meta, source=where)


def _parse_csv(text: str, where: str) -> LatencyTable:
    meta: dict[str, Any] = {}
    lines = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if s.startswith("#"):
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
    pairs = []
    for (n, _), row in zip(lines[1:], rows[1:]):
        w = f"{where} line {n}"
        if len(row) < len(header):
            raise LatencyTableError(f"{w} has {len(row)} fields, the header has {len(header)}; {_FIX}")
        key = (row[col["op"]].strip(),) + tuple(row[col[f]] for f in KEY_FIELDS[1:])
        pairs.append((_check_key(key, w), _ms_field(row[col["ms"]], w)))
    return LatencyTable(pairs, meta=meta, source=where)


class TableLatencyModel(LatencyModel):
    """Sum of per-layer table entries (add/pool at their consumer's bits, see
    :func:`~qnas.latency.base.inherit_weightless_bits`)."""

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


__all__ = ["COLUMNS", "KEY_FIELDS", "LatencyTable", "SCHEMA", "TARGET_META_KEY", "TableLatencyModel", "VERSION",
           "load_table", "meta_target", "plan_layer_keys", "space_layer_keys"]
