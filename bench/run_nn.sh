#!/bin/sh
# Runs the nn benchmarks (issue 3, "Performance"): libkd (bench_mlp) against
# PyTorch (bench/torch_mlp.py, Debian's /usr/bin/python3, one thread), and
# BLIS sgemm alone for the GEMM share of the big MLP. Builds nothing.
#
# usage: bench/run_nn.sh BUILD_DIR [ROUNDS] [case ...]
#   BUILD_DIR  a configured and built libkd tree (-Dbuildtype=release), e.g.
#              meson setup build-rel -Dbuildtype=release && ninja -C build-rel
#   ROUNDS     rounds (default 5); each round runs every libkd case and every
#              torch case once (which side goes first alternates) and BLIS on
#              each sub-configuration this CPU runs; medians over rounds.
# env: KD_BENCH_MIN_SECONDS (default 0.3) and KD_BENCH_REPS (default 3) per
#      measurement; KD_BENCH_CLOCK=cpu times with each thread's CPU clock on
#      both sides (for an oversubscribed machine; default: wall clock).
#
# Prints per case
#   bench=<case> libkd_ms=<median> torch_ms=<median> speedup=<torch/libkd> target=<x>
# and for the 784-1200-1200-10 step also (medians over rounds of per-round
# values, each round's libkd step against BLIS measured in the same round)
#   gemm_gflops=<the step's GEMM flops / libkd step time>
#   blis_step_gflops=<BLIS alone on the step's 8 GEMM shapes (same
#                     transposes): their flops / the sum of their times, best
#                     sub-configuration>
#   blis_peak_gflops=<best single BLIS product, incl. 1024x1024x512>
#   gemm_share=<gemm_gflops / blis_step_gflops>
#   gemm_share_peak=<gemm_gflops / blis_peak_gflops>
set -eu
[ $# -ge 1 ] || { sed -n '2,25p' "$0" >&2; exit 2; }
build=$1
shift
rounds=5
if [ $# -ge 1 ]; then
  case $1 in
    *[!0-9]*) ;;
    *) rounds=$1; shift ;;
  esac
fi
here=$(cd "$(dirname "$0")" && pwd)
bin=$build/bench/bench_mlp
py=/usr/bin/python3
min=${KD_BENCH_MIN_SECONDS:-0.3}
reps=${KD_BENCH_REPS:-3}
clk=
[ "${KD_BENCH_CLOCK:-wall}" = cpu ] && clk=--cpu
if [ ! -x "$bin" ]; then
  echo "run_nn.sh: $bin not found; build first: meson setup $build -Dbuildtype=release && ninja -C $build" >&2
  exit 2
fi
if ! $py -c 'import torch' 2>/dev/null; then
  echo "run_nn.sh: $py cannot import torch (Debian: apt-get install python3-torch)" >&2
  exit 2
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT INT TERM
[ -n "${KD_BENCH_RAW:-}" ] && trap 'cp "$out" "$KD_BENCH_RAW"; rm -f "$out"' EXIT INT TERM

run_kd() { "$bin" --min-seconds "$min" --reps "$reps" $clk "$@" >>"$out"; }
run_torch() { $py "$here/torch_mlp.py" --min-seconds "$min" --reps "$reps" $clk "$@" >>"$out"; }

r=1
while [ "$r" -le "$rounds" ]; do
  echo "round=$r" >>"$out"
  if [ $((r % 2)) -eq 1 ]; then
    run_kd "$@"
    run_torch "$@"
  else
    run_torch "$@"
    run_kd "$@"
  fi
  # BLIS picks its kernels once per process: one process per sub-configuration
  # (unset = BLIS's own choice; 0 skx, 3 haswell, 6 zen3 as in bench_gemm).
  # An id the CPU cannot run makes BLIS abort that child: skipped.
  for arch in auto 0 3 6; do
    if [ "$arch" = auto ]; then
      (unset BLIS_ARCH_TYPE; "$bin" --blis --min-seconds 0.1 $clk) >>"$out" 2>/dev/null || true
    else
      BLIS_ARCH_TYPE=$arch "$bin" --blis --min-seconds 0.1 $clk >>"$out" 2>/dev/null || true
    fi
  done
  r=$((r + 1))
done

awk -v rounds="$rounds" '
  function median(key,    n, i, j, t, v) {
    n = cnt[key]
    for (i = 1; i <= n; i++) v[i] = val[key, i]
    for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
    return (n % 2) ? v[(n + 1) / 2] : 0.5 * (v[n / 2] + v[n / 2 + 1])
  }
  function add(key, x) { cnt[key]++; val[key, cnt[key]] = x + 0 }
  function field(name,    i, k) {
    for (i = 1; i <= NF; i++) { k = index($i, "="); if (substr($i, 1, k - 1) == name) return substr($i, k + 1) }
    return ""
  }
  /^round=/ { r = field("round") + 0 }
  /^bench=/ {
    c = field("bench")
    if (!(c in seen)) { seen[c] = 1; order[n++] = c }
    if (field("libkd_ms") != "") { add("kd " c, field("libkd_ms")); kdr[c, r] = field("libkd_ms") + 0 }
    if (field("torch_ms") != "") add("th " c, field("torch_ms"))
    if (field("gemm_mflop") != "") mflop[c] = field("gemm_mflop") + 0
  }
  /^blis / {
    a = field("arch"); sh = field("shape"); g = field("gflops") + 0
    split(sh, d, /[x\/]/)
    fl = 2e-9 * d[1] * d[2] * d[3]            # GFLOP of this product
    if (g > peak[r]) peak[r] = g
    if (g > 0 && d[1] != 1024) { bt[r, a] += fl / g; bf[r, a] += fl; archs[r, a] = 1 }
  }
  END {
    # Per round: BLIS alone on the step'"'"'s own GEMM shapes (their flops over
    # the sum of their times), best sub-configuration; and the best single
    # product (peak). Shares are medians over rounds of per-round ratios.
    for (k in archs) {
      split(k, q, SUBSEP)
      g = bf[k] / bt[k]
      if (g > step[q[1]]) step[q[1]] = g
    }
    tgt["mlp_784_1200_1200_10_train_b128"] = 1.2; tgt["mlp_784_128_10_train_b128"] = 3
    tgt["mlp_784_32_10_infer_b1"] = 10; tgt["cnn_train_b128"] = 1.0
    for (i = 0; i < n; i++) {
      c = order[i]
      if (!cnt["kd " c] || !cnt["th " c]) continue
      kd = median("kd " c); th = median("th " c)
      printf "bench=%s libkd_ms=%.4f torch_ms=%.4f speedup=%.2f", c, kd, th, th / kd
      if (c in tgt) printf " target=%s", tgt[c]
      if (c in mflop && c ~ /1200/) {
        for (rr = 1; rr <= rounds; rr++)
          if (((c, rr) in kdr) && step[rr] > 0) {
            add("gf " c, mflop[c] / kdr[c, rr]); add("bs " c, step[rr]); add("bp " c, peak[rr])
            add("sh " c, mflop[c] / kdr[c, rr] / step[rr]); add("shp " c, mflop[c] / kdr[c, rr] / peak[rr])
          }
        if (cnt["sh " c])
          printf " gemm_gflops=%.1f blis_step_gflops=%.1f blis_peak_gflops=%.1f gemm_share=%.2f gemm_share_peak=%.2f", \
            median("gf " c), median("bs " c), median("bp " c), median("sh " c), median("shp " c)
      }
      printf " rounds=%d\n", rounds
    }
  }' "$out"
