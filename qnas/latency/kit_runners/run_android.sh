#!/usr/bin/env bash
# Time every layer of a qnas latency kit (TFLite) on an Android device with LiteRT's benchmark_model
# over adb, and write KIT/results.csv; then `qnas latency import KIT/results.csv --out table.json`.
#
# Written by `qnas latency kit --backend tflite`. Needs, on this computer: bash, adb, awk; on the
# device: the benchmark_model binary for its ABI (from the LiteRT/TensorFlow Lite releases, e.g.
# android_aarch64_benchmark_model), pushed once:
#     adb push android_aarch64_benchmark_model /data/local/tmp/benchmark_model
#     adb shell chmod +x /data/local/tmp/benchmark_model
#
# usage: run_android.sh [--threads N] [--runs N] [--warmup N] [--serial SERIAL] [--device NAME]
#                       [--out CSV] [--force] [-- EXTRA benchmark_model FLAGS]
#   e.g. run_android.sh --threads 4 -- --use_gpu=true        (GPU delegate)
#        run_android.sh -- --use_nnapi=true                  (NNAPI)
# Environment: ADB (adb binary), BENCHMARK_MODEL (path on the device, default
# /data/local/tmp/benchmark_model), REMOTE_DIR (device folder for the layer files, default
# /data/local/tmp/qnas_kit).
#
# Each layer file runs as
#   benchmark_model --graph=FILE --num_threads=N --num_runs=R --warmup_runs=W --min_secs=0 --warmup_min_secs=0 EXTRA
# (--min_secs=0 / --warmup_min_secs=0: exactly R timed and W warm-up runs, not "at least one second"),
# and its time is the last 'avg=' value benchmark_model prints (microseconds; the line of the timed
# runs, "count=R first=... curr=... min=... max=... avg=... std=..."), written in ms.
set -eo pipefail  # (no -u: macOS bash 3.2 treats an empty array as unset)

KIT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
THREADS=1 RUNS=50 WARMUP=5 SERIAL="" DEVICE_NAME="" OUT="" FORCE=0
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) THREADS="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --serial) SERIAL="$2"; shift 2 ;;
    --device) DEVICE_NAME="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --force) FORCE=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$KIT/results.csv}"
ADB="${ADB:-adb}"
BENCH="${BENCHMARK_MODEL:-/data/local/tmp/benchmark_model}"
REMOTE="${REMOTE_DIR:-/data/local/tmp/qnas_kit}"
ADBS=("$ADB")
[ -n "$SERIAL" ] && ADBS+=(-s "$SERIAL")

if [ -e "$OUT" ] && [ "$FORCE" != 1 ]; then
  echo "error: $OUT exists; pass --force to overwrite it or --out another file" >&2; exit 2
fi
[ -f "$KIT/layers.tsv" ] || { echo "error: $KIT/layers.tsv not found; run this script inside the kit" >&2; exit 2; }
command -v "$ADB" >/dev/null 2>&1 || { echo "error: adb not found; install Android platform-tools or set ADB" >&2; exit 2; }
if ! "${ADBS[@]}" shell "test -x $BENCH" >/dev/null 2>&1; then
  echo "error: $BENCH is not on the device (or not executable); push LiteRT's benchmark_model for its ABI:" \
       "adb push android_aarch64_benchmark_model $BENCH && adb shell chmod +x $BENCH" >&2
  exit 2
fi

prop() { "${ADBS[@]}" shell getprop "$1" 2>/dev/null | tr -d '\r"\\' || true; }
clean() { printf '%s' "$1" | tr -d '"\\' | tr '\n\t' '  '; }
MODEL="$(prop ro.product.model)"; SOC="$(prop ro.soc.model)"; [ -n "$SOC" ] || SOC="$(prop ro.board.platform)"
ANDROID="$(prop ro.build.version.release)"
KIT_ID="$(sed -n 's/.*"kit_id": *"\([^"]*\)".*/\1/p' "$KIT/manifest.json" | head -n1)"
RUNTIME="$(clean "TFLite benchmark_model over adb (--num_threads=$THREADS ${EXTRA[*]:-})")"
DEVICE="$(clean "${DEVICE_NAME:-$MODEL ${SOC:+($SOC)} / benchmark_model${EXTRA[*]:+ ${EXTRA[*]}}}")"

"${ADBS[@]}" shell mkdir -p "$REMOTE" >/dev/null
TIMES="$(mktemp)"; FAILS="$(mktemp)"
trap 'rm -f "$TIMES" "$FAILS"' EXIT
FILES=()
while IFS= read -r f; do FILES+=("$f"); done < <(awk -F'\t' 'NR > 1 && !seen[$1]++ { print $1 }' "$KIT/layers.tsv")
i=0
for f in "${FILES[@]}"; do
  i=$((i + 1))
  remote="$REMOTE/$(basename "$f")"
  if ! "${ADBS[@]}" push "$KIT/$f" "$remote" >/dev/null 2>&1; then
    printf '%s\t%s\n' "$f" "adb push failed" >> "$FAILS"; continue
  fi
  if out="$("${ADBS[@]}" shell "$BENCH" --graph="$remote" --num_threads="$THREADS" --num_runs="$RUNS" \
              --warmup_runs="$WARMUP" --min_secs=0 --warmup_min_secs=0 "${EXTRA[@]}" 2>&1)"; then
    us="$(printf '%s\n' "$out" | tr -d '\r' | grep -o 'avg=[0-9.eE+-]*' | tail -n1 | cut -d= -f2 || true)"
  else
    us=""
  fi
  "${ADBS[@]}" shell rm -f "$remote" >/dev/null 2>&1 || true
  if [ -z "$us" ]; then
    printf '%s\t%s\n' "$f" "$(printf '%s' "$out" | tr -d '\r' | tail -n1 | tr '\t' ' ' | cut -c1-200)" >> "$FAILS"
    continue
  fi
  printf '%s\t%s\n' "$f" "$(awk -v us="$us" 'BEGIN { printf "%.6g", us / 1000 }')" >> "$TIMES"
  printf '\r%d/%d layers' "$i" "${#FILES[@]}" >&2
done
printf '\n' >&2

NOW="$(date -u +%Y-%m-%dT%H:%M:%S+00:00)"
NT="$(wc -l < "$TIMES" | tr -d ' ')"; NF="$(wc -l < "$FAILS" | tr -d ' ')"
TMP="$OUT.tmp"
{
  echo "# qnas-latency-kit-results version 1"
  printf '# meta: {"device": "%s", "runtime": "%s", "threads": %s, "created": "%s", ' "$DEVICE" "$RUNTIME" "$THREADS" "$NOW"
  printf '"notes": "batch 1, benchmark_model avg of %s runs after %s warm-up, one model per layer", ' "$RUNS" "$WARMUP"
  printf '"kit": {"schema": "qnas-latency-kit-results", "version": 1, "kit_id": "%s", "backend": "tflite", ' "$KIT_ID"
  printf '"runner": "run_android.sh", "layers_timed": %s, "layers_failed": %s}, ' "$NT" "$NF"
  printf '"host": {"name": "%s", "cpu": "%s", "os": "Android %s", "machine": "android"}}\n' \
    "$(clean "$MODEL")" "$(clean "$SOC")" "$(clean "$ANDROID")"
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
