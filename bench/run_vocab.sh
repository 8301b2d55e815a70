#!/bin/sh
# Runs bench_vocab (libkd) and torch_vocab.py (PyTorch 1.13, Debian's
# python3) in the same run; prints libkd's lines, PyTorch's, and
# `bench=kd_dense_<BxV> ... speedup=<torch/libkd>`.
# usage: bench/run_vocab.sh [build-dir]   (default: build)
set -e
here=$(dirname "$0")
build=${1:-build}
kd=$(mktemp)
th=$(mktemp)
trap 'rm -f "$kd" "$th"' EXIT
"$build/bench/bench_vocab" > "$kd"
/usr/bin/python3 "$here/torch_vocab.py" > "$th"
cat "$kd" "$th"
awk '
  FNR == NR { if ($1 ~ /^bench=kd_dense/) { split($2, b, "="); kd[$1] = b[2] } next }
  { split($2, b, "="); if ($1 in kd) printf "%s libkd_ms=%.4f torch_ms=%.4f speedup=%.2f\n", $1, kd[$1], b[2], b[2] / kd[$1] }
' "$kd" "$th"
