#!/usr/bin/env bash
# Time every layer of a qnas latency kit (TensorRT Q/DQ ONNX) with trtexec, e.g. on a Jetson, and
# write KIT/results.csv; then `qnas latency import KIT/results.csv --out table.json`.
#
# Written by `qnas latency kit --backend tensorrt`. Needs bash, awk and trtexec (shipped with
# TensorRT: /usr/src/tensorrt/bin/trtexec on JetPack; set TRTEXEC or put it on PATH).
#
# usage: run_trtexec.sh [--iterations N] [--warmup-ms MS] [--device NAME] [--out CSV] [--force]
#                       [-- EXTRA trtexec FLAGS]
#   e.g. run_trtexec.sh -- --useDLACore=0 --allowGPUFallback       (Jetson DLA)
#
# Each layer file runs as
#   trtexec --onnx=FILE --int8 --fp16 --warmUp=MS --iterations=N --duration=0 --avgRuns=N EXTRA
# (--int8: the Q/DQ nodes set the int8 layers; --fp16: what has no Q/DQ may run in fp16, as in the
# exported network; --duration=0: exactly N timed iterations), and its time is the median of
# trtexec's "GPU Compute Time" line (ms; TensorRT 8+: "GPU Compute Time: min = ..., median = X ms").
set -eo pipefail  # (no -u: macOS bash 3.2 treats an empty array as unset)

KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ITER=200 WARMUP_MS=200 DEVICE_NAME="" OUT="" FORCE=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --iterations) ITER="$2"; shift 2 ;;
    --warmup-ms) WARMUP_MS="$2"; shift 2 ;;
    --device) DEVICE_NAME="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$KIT/results.csv}"
TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"

if [ -e "$OUT" ] && [ "$FORCE" != 1 ]; then
  echo "error: $OUT exists; pass --force to overwrite it or --out another file" >&2; exit 2
fi
[ -f "$KIT/layers.tsv" ] || { echo "error: $KIT/layers.tsv not found; run this script inside the kit" >&2; exit 2; }
[ -x "$TRTEXEC" ] || { echo "error: trtexec not found; install TensorRT or set TRTEXEC=/path/to/trtexec" >&2; exit 2; }

clean() { printf '%s' "$1" | tr -d '"\\' | tr '\n\t\0' '   '; }
if [ -r /proc/device-tree/model ]; then
  MODEL="$(tr -d '\0' < /proc/device-tree/model)"
elif command -v nvidia-smi >/dev/null 2>&1; then
  MODEL="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1)"
else
  MODEL="$(uname -m) GPU"
fi
KIT_ID="$(sed -n 's/.*"kit_id": *"\([^"]*\)".*/\1/p' "$KIT/manifest.json" | head -n1)"
TRT_VERSION=""
TIMES="$(mktemp)"; FAILS="$(mktemp)"
trap 'rm -f "$TIMES" "$FAILS"' EXIT
FILES=()
while IFS= read -r f; do FILES+=("$f"); done < <(awk -F'\t' 'NR > 1 && !seen[$1]++ { print $1 }' "$KIT/layers.tsv")
i=0
for f in "${FILES[@]}"; do
  i=$((i + 1))
  if out="$("$TRTEXEC" --onnx="$KIT/$f" --int8 --fp16 --warmUp="$WARMUP_MS" --iterations="$ITER" --duration=0 \
              --avgRuns="$ITER" "${EXTRA[@]}" 2>&1)"; then
    ms="$(printf '%s\n' "$out" | grep 'GPU Compute Time' | tail -n1 \
          | sed -n 's/.*median[ =:]*\([0-9.eE+-]*\) *ms.*/\1/p' || true)"
  else
    ms=""
  fi
  [ -n "$TRT_VERSION" ] || TRT_VERSION="$(printf '%s\n' "$out" | sed -n 's/.*TensorRT version: *\([0-9.]*\).*/\1/p' | head -n1)"
  if [ -z "$ms" ]; then
    printf '%s\t%s\n' "$f" "$(printf '%s' "$out" | grep -i 'error' | tail -n1 | tr '\t' ' ' | cut -c1-200 || true)" >> "$FAILS"
    continue
  fi
  printf '%s\t%s\n' "$f" "$ms" >> "$TIMES"
  printf '\r%d/%d layers' "$i" "${#FILES[@]}" >&2
done
printf '\n' >&2

NOW="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
NT="$(wc -l < "$TIMES" | tr -d ' ')"; NF="$(wc -l < "$FAILS" | tr -d ' ')"
RUNTIME="$(clean "TensorRT ${TRT_VERSION:-?} trtexec --int8 --fp16${EXTRA[*]:+ ${EXTRA[*]}}")"
DEVICE="$(clean "${DEVICE_NAME:-$MODEL / TensorRT ${TRT_VERSION:-?}}")"
TMP="$OUT.tmp"
{
  echo "# qnas-latency-kit-results version 1"
  printf '# meta: {"device": "%s", "runtime": "%s", "threads": null, "created": "%s", ' "$DEVICE" "$RUNTIME" "$NOW"
  printf '"notes": "batch 1, median GPU compute time of %s trtexec iterations after %s ms warm-up, one engine per layer", ' "$ITER" "$WARMUP_MS"
  printf '"kit": {"schema": "qnas-latency-kit-results", "version": 1, "kit_id": "%s", "backend": "tensorrt", ' "$KIT_ID"
  printf '"runner": "run_trtexec.sh", "layers_timed": %s, "layers_failed": %s}, ' "$NT" "$NF"
  printf '"host": {"name": "%s", "cpu": "%s", "os": "%s", "machine": "%s"}}\n' \
    "$(clean "$(uname -n)")" "$(clean "$MODEL")" "$(clean "$(uname -sr)")" "$(uname -m)"
  echo "op,cin,cout,hw,k,stride,groups,w_bits,a_bits,ms,file"
  awk -F'\t' 'NR == FNR { ms[$1] = $2; next } FNR > 1 && ($1 in ms) {
      print $2","$3","$4","$5","$6","$7","$8","$9","$10","ms[$1]","$1 }' "$TIMES" "$KIT/layers.tsv"
  awk -F'\t' '{ print "# failed: "$1": "$2 }' "$FAILS"
} > "$TMP"
mv "$TMP" "$OUT"
echo "timed $NT of ${#FILES[@]} layer files on $MODEL; wrote $OUT"
if [ "$NF" != 0 ]; then
  echo "$NF layer file(s) failed (listed as '# failed:' lines in $OUT):" >&2
  cat "$FAILS" >&2
  exit 1
fi
echo "next: qnas latency import $OUT --out table.json"
