#!/bin/sh
# Runs bench_mlp (libkd) and torch_mlp.py (PyTorch, Debian's python3) in the
# same run and prints `bench=<case> libkd_ms=... torch_ms=... speedup=...`.
# usage: bench/run_nn.sh [build-dir]   (default: build)
set -e
here=$(dirname "$0")
build=${1:-build}
kd=$(mktemp)
th=$(mktemp)
trap 'rm -f "$kd" "$th"' EXIT
"$build/bench/bench_mlp" > "$kd"
/usr/bin/python3 "$here/torch_mlp.py" > "$th"
awk '
  FNR == NR { split($1, a, "="); split($2, b, "="); kd[a[2]] = b[2]; order[n++] = a[2]; next }
  { split($1, a, "="); split($2, b, "="); th[a[2]] = b[2] }
  END { for (i = 0; i < n; i++) { c = order[i];
          printf "bench=%s libkd_ms=%.4f torch_ms=%.4f speedup=%.2f\n", c, kd[c], th[c], th[c] / kd[c] } }
' "$kd" "$th"
