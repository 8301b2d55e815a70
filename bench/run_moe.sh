#!/bin/sh
# Runs bench_moe (libkd) and torch_moe.py (PyTorch, Debian's python3, the
# Hugging Face Mixtral per-expert loop) in the same run, one thread each, and
# prints `bench=<case> libkd_ms=... torch_ms=... speedup=...` plus bench_moe's
# own `bench=moe_vs_dense_* ... overhead=...` lines.
# usage: bench/run_moe.sh [build-dir]   (default: build)
set -e
here=$(dirname "$0")
build=${1:-build}
kd=$(mktemp)
th=$(mktemp)
trap 'rm -f "$kd" "$th"' EXIT
OMP_NUM_THREADS=1 "$build/bench/bench_moe" > "$kd"
OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 /usr/bin/python3 "$here/torch_moe.py" > "$th"
grep overhead= "$kd" || true
grep -v overhead= "$kd" | awk '
  FNR == NR { split($1, a, "="); split($2, b, "="); kd[a[2]] = b[2]; order[n++] = a[2]; next }
  { split($1, a, "="); split($2, b, "="); th[a[2]] = b[2] }
  END { for (i = 0; i < n; i++) { c = order[i];
          printf "bench=%s libkd_ms=%.4f torch_ms=%.4f speedup=%.2f\n", c, kd[c], th[c], th[c] / kd[c] } }
' - "$th"
