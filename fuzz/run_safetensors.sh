#!/usr/bin/env bash
# Builds and runs the safetensors libFuzzer target.
#   fuzz/run_safetensors.sh [SECONDS] [extra libFuzzer args...]
# Needs clang and libclang-rt-14-dev (Debian). New inputs go to
# build-fuzz/corpus-safetensors; the committed seeds in fuzz/corpus/safetensors
# are read, not written. Crashes are written to build-fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}; shift || true
out=build-fuzz
mkdir -p "$out/corpus-safetensors"
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Iinclude -Ilib/core -Ilib/io -D_POSIX_C_SOURCE=200809L \
  fuzz/fuzz_safetensors.c lib/core/*.c lib/io/kd_json.c lib/io/kd_safetensors_*.c -lm -o "$out/fuzz_safetensors"
"$out/fuzz_safetensors" -max_total_time="$secs" -max_len=4096 -timeout=10 \
  -rss_limit_mb=2048 -dict=fuzz/safetensors.dict -artifact_prefix="$out/" "$@" \
  "$out/corpus-safetensors" fuzz/corpus/safetensors
