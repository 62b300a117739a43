"""Import published per-layer latency tables into qnas' table schema (:mod:`qnas.latency.table`).

``qnas latency import --format apq|nnmeter|csv SRC --out TABLE.json [--device NAME]`` runs
:func:`import_table_file`; every format is read with the json/csv modules only (no pickle), and the
table is written atomically, never over an existing file unless told to.

Key conventions
---------------
A qnas key is ``(op, cin, cout, hw, k, stride, groups, w_bits, a_bits)`` with ``hw`` the layer's
*input* spatial size, convolutions padded ``k // 2``, and ``w_bits``/``a_bits`` the bits of the
weights and of the activations the layer consumes (32 = float). A conv's op kind follows from its
shape, the same way for every format:

* ``groups == cin == cout`` and ``groups > 1``  ->  ``dwconv``
* ``groups == 1`` and ``k == 1``                 ->  ``pwconv``
* ``groups == 1`` and ``k > 1``                  ->  ``conv``
* any other grouping (grouped conv, depth multiplier) has no qnas op: the row is skipped and counted.

``apq`` -- the latency/energy lookup table APQ (Wang et al., CVPR 2020,
github.com/mit-han-lab/apq, ``lut/BitFusion_new.b1.dict``) publishes for the BitFusion accelerator:
one JSON object whose keys are ``"(cin, cout, hw, k, stride, padding, groups)-W{w}A{a}"`` (APQ's
``utils/latency_predictor.py`` writes ``'{}-W{}A{}'.format(tuple, w_bits, a_bits)``; ``hw`` is the
input size: the project conv after a stride-2 depthwise conv is keyed at ``hw // stride``) and whose
values are ``{"latency": ..., "energy": ...}`` (a bare number is read as the latency). The ``-w4a4``
spelling is accepted too. ``padding`` must be ``k // 2`` (qnas convs are padded so); other rows are
skipped. APQ's two special keys ``head`` (its first conv and first block: the *input* end of the
network) and ``tail`` (feature-mix conv, pool and classifier) have no shape; APQ's predictor adds them
to the sum of the conv entries. They become the table defaults ``stem`` (= APQ ``head``) and ``head``
(the qnas classifier, = APQ ``tail``), and ``mix``, ``pre_head``, ``pool`` and ``add`` default to 0
(APQ counts the feature-mix conv and the pool inside ``tail`` and charges no residual add), so the
qnas sum over an arch APQ can describe equals APQ's own ``predict_lat``. APQ's values are batch-1
milliseconds; its ``energy`` values become the entries' ``mj`` column (and the same defaults as
energy defaults), read as millijoules -- APQ's predictor sums them exactly as it sums latencies, and its
paper reports BitFusion energy in mJ -- so ``--objectives accuracy,latency,energy`` works with the table.

``nnmeter`` -- a kernel data CSV as nn-Meter's predictor builder writes it (github.com/microsoft/nn-Meter,
``get_data_by_profiled_results(..., save_path=...)``, saved as ``Data_{kernel}_{mark}.csv``): a
``model_path`` column, the kernel's configuration columns (``HW, CIN, COUT, KERNEL_SIZE, STRIDES``
for conv/dwconv kernels, ``CIN, COUT`` for ``fc``, ``HW, CIN`` for ``global-avgpool``, ``HW, CIN,
CIN`` for ``add``/``addrelu``), optional ``feature_*`` columns (FLOPs, params: ignored) and
``latency`` in ms. The kernel type comes from ``--kernel``, else a ``kernel`` column, else the file
name ``Data_<kernel>_<mark>.csv``. Kernels map by their first word: ``conv-*`` -> conv/pwconv (a
conv kernel fuses its BN and activation, as a qnas layer does), ``dwconv-*`` -> dwconv (cout = groups
= cin), ``fc`` -> fc (hw 1), ``global-avgpool`` -> pool, ``add``/``addrelu`` -> add; other kernels
(maxpool, concat, se, activations ...) are skipped and counted. nn-Meter kernels carry no bit widths:
every row gets ``--bits`` (default ``32,32``: float, what nn-Meter measures; give the bits of the
models you profiled, e.g. ``8,8`` for int8). Rows that repeat a key (nn-Meter samples may) keep
their median.

``csv`` -- any CSV with one row per layer. Column names are matched case-insensitively, with these
aliases: op (``op``, ``type``, ``kind``, ``operator``), ``cin`` (``in_channels``), ``cout``
(``out_channels``), ``hw`` (``input_size``, ``input_h``, ``h``), ``k`` (``kernel``, ``kernel_size``,
``ks``), ``stride`` (``strides``), ``groups`` (``group``), ``w_bits`` (``wbits``, ``weight_bits``),
``a_bits`` (``abits``, ``act_bits``, ``activation_bits``), and the latency as ``ms`` / ``latency_ms``
/ ``latency`` (ms) or ``us`` / ``latency_us`` (microseconds). Without an op column the op is inferred
from the shape (above); without ``groups`` it is ``cin`` for a dwconv row, else 1; without bit
columns every row gets ``--bits``; a missing ``k``/``stride`` is 1 (fc, add, pool). qnas' own
table CSV is a special case.

``kit`` -- the ``results.csv`` a runner of a qnas latency kit wrote on the user's device
(:mod:`qnas.latency.kit`, ``qnas latency kit``): qnas' table CSV with a ``# meta:`` line naming the
``qnas-latency-kit-results`` schema, the runner's device, runtime and threads, and the kit's id. It is
recognised without ``--format``; ``manifest.json`` next to it is checked (same kit, a time for every
layer key, the missing ones listed), and the table's ``meta.device`` is the runner's.

``--unit`` (``ms``, ``us``, ``s``) rescales values the source gives in another unit than its format
says.
"""
from __future__ import annotations

import csv
import io
import json
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from qnas.errors import LatencyTableError
from qnas.latency.table import OPS, LatencyTable, default_meta, load_table

FORMATS = ("apq", "nnmeter", "csv", "kit")
UNITS = {"ms": 1.0, "us": 1e-3, "s": 1e3}
FLOAT_BITS = 32

_APQ_KEY = re.compile(r"^\(\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*,\s*(\d+)\s*\)"
                      r"\s*-\s*[Ww](\d+)\s*[Aa](\d+)\s*$")
_BITS = re.compile(r"^\s*(?:[Ww]\s*)?(\d+)\s*(?:,|/|x|\s+|[Aa])\s*(?:[Aa]\s*)?(\d+)\s*$")


@dataclass
class ImportResult:
    """A converted table and what of the source it skipped (reason -> count)."""

    table: LatencyTable
    source: str
    fmt: str
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    merged: int = 0  # rows that repeated a key (their median kept)
    notes: list = field(default_factory=list)  # further lines to print (e.g. a kit's manifest check)

    def lines(self) -> list[str]:
        bits = Counter(f"W{k[7]}A{k[8]}" for k in self.table)
        ops = Counter(k[0] for k in self.table)
        out = [f"imported {len(self.table)} entries from {self.source} ({self.fmt}, {self.rows} rows): "
               + ", ".join(f"{n} {op}" for op, n in sorted(ops.items())) + "; bits "
               + ", ".join(f"{b} {n}" for b, n in sorted(bits.items()))]
        if self.merged:
            out.append(f"  {self.merged} rows repeated a key: each key keeps the median of its rows")
        for why, n in self.skipped.most_common():
            out.append(f"  skipped {n} row(s): {why}")
        if self.table.defaults:
            out.append("  defaults: " + ", ".join(f"{k} {v:g} ms" for k, v in self.table.defaults.items()))
        out += [f"  {n}" for n in self.notes]
        out.append(f"  latency target (meta.device): {self.table.target}")
        return out


def parse_bits(text: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"8,8"``, ``"w4a8"``, ``"4/8"`` or a pair -> (w_bits, a_bits); None -> float (32, 32)."""
    if text is None:
        return (FLOAT_BITS, FLOAT_BITS)
    if isinstance(text, tuple):
        w, a = text
    else:
        m = _BITS.match(str(text))
        if not m:
            raise LatencyTableError(f"--bits {text!r} is not a weight/activation bit pair; write it as W,A "
                                    "(e.g. 8,8 or w4a8; 32,32 = float)")
        w, a = int(m.group(1)), int(m.group(2))
    if w < 1 or a < 1:
        raise LatencyTableError(f"--bits {text!r}: bits must be >= 1 (32 = float)")
    return (w, a)


def conv_op(cin: int, cout: int, k: int, groups: int) -> str | None:
    """The qnas op of a conv of this shape (module docstring), None when qnas has none."""
    if groups > 1 and groups == cin == cout:
        return "dwconv"
    if groups == 1:
        return "pwconv" if k == 1 else "conv"
    return None


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise LatencyTableError(f"{what} not found: {path}; check the path")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise LatencyTableError(f"cannot read {what} {path} ({type(e).__name__}); pass a text file") from None


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool):
        raise LatencyTableError(f"{where}: {v!r} is not a number")
    try:
        return float(v.strip() if isinstance(v, str) else v)
    except (TypeError, ValueError, AttributeError):
        raise LatencyTableError(f"{where}: {v!r} is not a number; fix the source file") from None


def _finish(pairs: Iterable[tuple[tuple, float]], meta: dict[str, Any], src: str, fmt: str, rows: int,
            skipped: Counter, defaults: dict[str, float] | None = None,
            energies: Iterable[tuple[tuple, float]] = (), energy_defaults: dict[str, float] | None = None
            ) -> ImportResult:
    def medians(items: Iterable[tuple[tuple, float]]) -> tuple[dict[tuple, float], int]:
        groups: dict[tuple, list[float]] = defaultdict(list)
        for key, v in items:
            groups[key].append(v)
        return ({k: (v[0] if len(v) == 1 else statistics.median(v)) for k, v in groups.items()},
                sum(len(v) - 1 for v in groups.values()))

    entries, merged = medians(pairs)
    if not entries:
        reasons = "; ".join(f"{n} {why}" for why, n in skipped.most_common(3)) or "it has no data rows"
        raise LatencyTableError(f"{src}: no row could be imported as a {fmt} table ({reasons}); check --format")
    energy, _ = medians(energies)
    table = LatencyTable(entries, meta=meta, defaults=defaults or {}, energy=energy,
                         energy_defaults=energy_defaults or {})
    return ImportResult(table, src, fmt, rows, skipped, merged)


def _meta(src: Path, fmt: str, device: str | None, notes: str, **extra: Any) -> dict[str, Any]:
    return default_meta(device or src.stem, runtime=f"imported from {fmt}", threads=None,
                        notes=f"imported from {src.name} ({fmt}); {notes}", source_file=src.name, **extra)


# ---- APQ -----------------------------------------------------------------------------------------
def import_apq(src: str | Path, *, device: str | None = None, unit: str = "ms") -> ImportResult:
    """APQ's BitFusion-style lookup table (module docstring)."""
    path = Path(src)
    text = _read_text(path, "APQ table")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise LatencyTableError(f"{path} is not valid JSON (line {e.lineno}: {e.msg}); an APQ table is one JSON "
                                'object of "(cin, cout, hw, k, stride, pad, groups)-WxAy" keys') from None
    if not isinstance(doc, dict):
        raise LatencyTableError(f"{path}: an APQ table is a JSON object, got a {type(doc).__name__}")
    scale = UNITS[unit]
    skipped: Counter = Counter()
    pairs = []
    energies = []
    special: dict[str, float] = {}
    special_mj: dict[str, float] = {}
    for raw, v in doc.items():
        where = f"{path} key {raw!r}"
        value = v.get("latency") if isinstance(v, dict) else v
        if isinstance(v, dict) and "latency" not in v:
            skipped["no 'latency' value"] += 1
            continue
        ms = _number(value, where) * scale
        mj = _number(v["energy"], where) if isinstance(v, dict) and v.get("energy") is not None else None
        if raw in ("head", "tail"):
            special[raw] = ms
            if mj is not None:
                special_mj[raw] = mj
            continue
        m = _APQ_KEY.match(raw)
        if not m:
            skipped["key not of the form (cin, cout, hw, k, stride, pad, groups)-WxAy"] += 1
            continue
        cin, cout, hw, k, stride, pad, groups, w, a = (int(x) for x in m.groups())
        if pad != k // 2:
            skipped["padding is not k // 2 (qnas convs are padded k // 2)"] += 1
            continue
        op = conv_op(cin, cout, k, groups)
        if op is None:
            skipped["grouped conv (groups not 1 or cin == cout) has no qnas op"] += 1
            continue
        pairs.append(((op, cin, cout, hw, k, stride, groups, w, a), ms))
        if mj is not None:
            energies.append((pairs[-1][0], mj))
    defaults: dict[str, float] = {}
    energy_defaults: dict[str, float] = {}
    notes = "APQ keys (cin, cout, hw, k, stride, pad, groups)-WxAy"
    if energies:
        notes += "; energy imported as mJ (column mj), summed like APQ's predictor sums it"
    if special:
        defaults = {"mix": 0.0, "pre_head": 0.0, "pool": 0.0, "add": 0.0}
        if "head" in special:
            defaults["stem"] = special["head"]
        if "tail" in special:
            defaults["head"] = special["tail"]
        notes += ("; defaults: stem = APQ 'head' (first conv + first block), head = APQ 'tail' (feature mix, pool, "
                  "classifier), mix/pre_head/pool/add = 0 as in APQ's predictor")
        if energies:
            energy_defaults = {name: 0.0 for name in ("mix", "pre_head", "pool", "add")}
            energy_defaults.update({{"head": "stem", "tail": "head"}[k]: v for k, v in special_mj.items()})
    return _finish(pairs, _meta(path, "apq", device, notes), str(path), "apq", len(doc), skipped, defaults,
                   energies, energy_defaults)


# ---- CSV (nn-Meter and generic) ------------------------------------------------------------------
def _csv_rows(path: Path, what: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    text = _read_text(path, what)
    lines = [(n, l) for n, l in enumerate(text.splitlines(), 1) if l.strip() and not l.lstrip().startswith("#")]
    if not lines:
        raise LatencyTableError(f"{path} has no CSV header; the first row must name the columns")
    try:
        rows = list(csv.reader(io.StringIO("\n".join(l for _, l in lines))))
    except csv.Error as e:
        raise LatencyTableError(f"{path} is not valid CSV ({e})") from None
    header = [h.strip() for h in rows[0]]
    return header, [(n, r) for (n, _), r in zip(lines[1:], rows[1:])]


_NNMETER_KERNEL_FILE = re.compile(r"^Data_(.+)_[^_]+$")


def _nnmeter_op(kernel: str) -> str | None:
    k = kernel.strip().lower()
    if k.startswith("dwconv"):
        return "dwconv"
    if k.startswith("conv"):
        return "conv"
    if k == "fc" or k.startswith("fc-"):
        return "fc"
    if k in ("global-avgpool", "gap", "global_avgpool"):
        return "pool"
    if k in ("add", "addrelu"):
        return "add"
    return None


def import_nnmeter(src: str | Path, *, device: str | None = None, unit: str = "ms", kernel: str | None = None,
                   bits: str | tuple[int, int] | None = None) -> ImportResult:
    """An nn-Meter kernel data CSV (module docstring)."""
    path = Path(src)
    w_bits, a_bits = parse_bits(bits)
    header, rows = _csv_rows(path, "nn-Meter CSV")
    cols: dict[str, int] = {}
    for i, h in enumerate(header):
        cols.setdefault(h.upper(), i)  # "CIN,CIN" of add kernels: the first
    if "LATENCY" not in cols:
        raise LatencyTableError(f"{path} has no latency column; an nn-Meter kernel CSV has model_path, the kernel's "
                                "config columns (HW, CIN, COUT, KERNEL_SIZE, STRIDES) and latency")
    if kernel is None and "KERNEL" not in cols:
        m = _NNMETER_KERNEL_FILE.match(path.stem)
        if not m:
            raise LatencyTableError(f"cannot tell the nn-Meter kernel type of {path.name}: pass --kernel "
                                    "(e.g. conv-bn-relu, dwconv-bn-relu, fc, global-avgpool, add) or name the file "
                                    "Data_<kernel>_<mark>.csv as nn-Meter does")
        kernel = m.group(1)
    scale = UNITS[unit]
    skipped: Counter = Counter()
    pairs = []

    def get(row: list[str], name: str, where: str, default: int | None = None) -> int:
        if name not in cols or cols[name] >= len(row) or not row[cols[name]].strip():
            if default is None:
                raise LatencyTableError(f"{where}: no {name} value; an nn-Meter {kind} row needs it")
            return default
        v = _number(row[cols[name]], f"{where} {name}")
        if not v.is_integer() or v < 1:
            raise LatencyTableError(f"{where}: {name}={row[cols[name]]!r} is not a positive integer")
        return int(v)

    for n, row in rows:
        where = f"{path} line {n}"
        kind = (row[cols["KERNEL"]].strip() if "KERNEL" in cols and kernel is None else kernel) or ""
        op = _nnmeter_op(kind)
        if op is None:
            skipped[f"nn-Meter kernel {kind!r} has no qnas op"] += 1
            continue
        ms = _number(row[cols["LATENCY"]] if cols["LATENCY"] < len(row) else "", f"{where} latency") * scale
        if op == "fc":
            cin, cout, hw, k, stride, groups = get(row, "CIN", where), get(row, "COUT", where), 1, 1, 1, 1
        else:
            hw, cin = get(row, "HW", where), get(row, "CIN", where)
            cout, k, stride, groups = cin, 1, 1, 1
            if op in ("conv", "dwconv"):
                k = get(row, "KERNEL_SIZE", where)
                stride = get(row, "STRIDES", where)
                if op == "conv":
                    cout = get(row, "COUT", where)
                    op = conv_op(cin, cout, k, 1) or "conv"
                else:
                    groups = cin
        pairs.append(((op, cin, cout, hw, k, stride, groups, w_bits, a_bits), ms))
    notes = f"nn-Meter kernel CSV ({kernel or 'kernel column'}); bits W{w_bits}A{a_bits} given at import"
    return _finish(pairs, _meta(path, "nnmeter", device, notes), str(path), "nnmeter", len(rows), skipped)


_CSV_ALIASES = {
    "op": ("op", "type", "kind", "operator"),
    "cin": ("cin", "in_channels", "c_in"),
    "cout": ("cout", "out_channels", "c_out"),
    "hw": ("hw", "input_size", "input_h", "h"),
    "k": ("k", "kernel", "kernel_size", "ks"),
    "stride": ("stride", "strides"),
    "groups": ("groups", "group"),
    "w_bits": ("w_bits", "wbits", "weight_bits"),
    "a_bits": ("a_bits", "abits", "act_bits", "activation_bits"),
}
_MS_COLUMNS = (("ms", 1.0), ("latency_ms", 1.0), ("latency", 1.0), ("us", 1e-3), ("latency_us", 1e-3))


def import_csv(src: str | Path, *, device: str | None = None, unit: str = "ms",
               bits: str | tuple[int, int] | None = None) -> ImportResult:
    """Any per-layer CSV with shape columns (module docstring)."""
    path = Path(src)
    default_bits = parse_bits(bits)
    header, rows = _csv_rows(path, "latency CSV")
    low = [h.lower() for h in header]
    col: dict[str, int] = {}
    for name, aliases in _CSV_ALIASES.items():
        for a in aliases:
            if a in low:
                col[name] = low.index(a)
                break
    ms_col = next(((low.index(c), f) for c, f in _MS_COLUMNS if c in low), None)
    lacking = [n for n in ("cin", "hw") if n not in col] + ([] if ms_col is not None else ["ms"])
    if lacking:
        raise LatencyTableError(f"{path} lacks column(s) {lacking}; a latency CSV needs at least cin, hw and ms "
                                "(or latency_ms / latency_us), plus cout, k, stride, groups, op, w_bits, a_bits "
                                "where they apply (see qnas/latency/importers.py)")
    scale = UNITS[unit]
    skipped: Counter = Counter()
    pairs = []

    def cell(row: list[str], name: str) -> str:
        i = col.get(name)
        return row[i].strip() if i is not None and i < len(row) else ""

    def integer(row: list[str], name: str, where: str, default: int | None) -> int:
        v = cell(row, name)
        if not v:
            if default is None:
                raise LatencyTableError(f"{where}: no {name} value")
            return default
        f = _number(v, f"{where} {name}")
        if not f.is_integer() or f < 1:
            raise LatencyTableError(f"{where}: {name}={v!r} is not a positive integer")
        return int(f)

    for n, row in rows:
        where = f"{path} line {n}"
        cin = integer(row, "cin", where, None)
        hw = integer(row, "hw", where, None)
        k = integer(row, "k", where, 1)
        stride = integer(row, "stride", where, 1)
        op = cell(row, "op").lower()
        cout = integer(row, "cout", where, cin)
        groups_given = bool(cell(row, "groups"))
        groups = integer(row, "groups", where, 1)
        if not op:
            op = conv_op(cin, cout, k, groups) or ""
            if not op:
                skipped["grouped conv (groups not 1 or cin == cout) has no qnas op"] += 1
                continue
        elif op not in OPS:
            skipped[f"op {op!r} is not a qnas op ({', '.join(OPS)})"] += 1
            continue
        if op == "dwconv" and not groups_given:
            groups = cin
        w_bits = integer(row, "w_bits", where, default_bits[0])
        a_bits = integer(row, "a_bits", where, default_bits[1])
        raw = row[ms_col[0]] if ms_col[0] < len(row) else ""
        ms = _number(raw, f"{where} {header[ms_col[0]]}") * ms_col[1] * scale
        pairs.append(((op, cin, cout, hw, k, stride, groups, w_bits, a_bits), ms))
    notes = "generic per-layer CSV" + ("" if "w_bits" in col else f"; bits W{default_bits[0]}A{default_bits[1]} "
                                                                  "given at import")
    return _finish(pairs, _meta(path, "csv", device, notes), str(path), "csv", len(rows), skipped)


# ---- entry point ---------------------------------------------------------------------------------
def detect_format(src: str | Path) -> str:
    """The format of ``src`` when it can be told from the file: ``kit`` for a kit runner's results CSV;
    anything else needs ``--format``."""
    from qnas.latency.kit import is_kit_results

    if is_kit_results(src):
        return "kit"
    raise LatencyTableError(f"cannot tell the format of {src}; pass --format {'|'.join(f for f in FORMATS if f != 'kit')} "
                            "(only a qnas latency kit's results.csv is recognised by itself)")


def import_table(src: str | Path, fmt: str | None, *, device: str | None = None, unit: str = "ms",
                 kernel: str | None = None, bits: str | tuple[int, int] | None = None) -> ImportResult:
    """Convert ``src`` of format ``fmt`` (:data:`FORMATS`; None: :func:`detect_format`) to a
    :class:`~qnas.latency.table.LatencyTable` whose ``meta.device`` is ``device`` (default: the source
    file's stem; for a kit, the runner's device). ``bits`` (W,A) is given to rows of formats without bit
    widths; ``kernel`` names an nn-Meter CSV's kernel type; ``unit`` rescales."""
    if fmt is None:
        fmt = detect_format(src)
    if fmt == "kit":
        if bits is not None or kernel is not None or unit != "ms":
            raise LatencyTableError("--bits, --kernel and --unit do not apply to kit results: their rows carry the "
                                    "bits and ms")
        from qnas.latency.kit import import_kit_results

        return import_kit_results(src, device=device)
    if fmt not in FORMATS:
        raise LatencyTableError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if unit not in UNITS:
        raise LatencyTableError(f"unknown unit {unit!r}; choose one of {', '.join(UNITS)}")
    if fmt == "apq":
        if bits is not None or kernel is not None:
            raise LatencyTableError("--bits and --kernel do not apply to an APQ table: its keys carry the bits")
        return import_apq(src, device=device, unit=unit)
    if fmt == "nnmeter":
        return import_nnmeter(src, device=device, unit=unit, kernel=kernel, bits=bits)
    if kernel is not None:
        raise LatencyTableError("--kernel applies to --format nnmeter only")
    return import_csv(src, device=device, unit=unit, bits=bits)


def import_table_file(src: str | Path, fmt: str | None, out: str | Path, *, overwrite: bool = False,
                      **options: Any) -> ImportResult:
    """:func:`import_table` and write the table to ``out`` (.json or .csv) atomically; an existing ``out``
    is refused (before reading ``src``) unless ``overwrite``."""
    out = Path(out)
    if out.suffix.lower() not in (".json", ".csv"):
        raise LatencyTableError(f"--out must end in .json or .csv, got {out.name}")
    if out.exists() and not overwrite:
        raise LatencyTableError(f"{out} already exists; choose another --out or pass --overwrite")
    result = import_table(src, fmt, **options)
    result.table.save(out, overwrite=overwrite)
    result.table = load_table(out)  # what a later run reads, source included
    return result


__all__ = ["FORMATS", "ImportResult", "conv_op", "detect_format", "import_apq", "import_csv", "import_nnmeter", "import_table",
           "import_table_file", "parse_bits"]
