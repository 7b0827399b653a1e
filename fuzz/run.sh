#!/bin/sh
# Runs Berth's fuzz targets with cargo fuzz on the stable toolchain: libFuzzer without a sanitizer
# (they need nightly), overflow checks and debug assertions on. Needs `cargo install cargo-fuzz`
# and a C++ compiler (g++) for libFuzzer.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     default: 300 s each, every target
#
# New inputs go to $BERTH_FUZZ_WORK/<target> (default /tmp/berth-fuzz), never into the small
# corpus kept in fuzz/corpus/<target>; a crash is written to fuzz/artifacts/<target>/. To keep an
# input, copy it into fuzz/corpus/<target>/ (a meaningful seed) or fuzz/regressions/<target>/
# (a fixed crash); the crates' `fuzz_corpus` tests then run it in CI.
set -eu
cd "$(dirname "$0")"
secs=${1:-300}
[ $# -gt 0 ] && shift
targets=${*:-"cni_config cni_env cloud_response csi_request"}
work=${BERTH_FUZZ_WORK:-/tmp/berth-fuzz}
# `--sanitizer none`: the sanitizers need nightly's -Z flags; without one cargo fuzz passes only
# stable -C flags (sancov instrumentation, debug assertions), so the stable toolchain builds it.
for t in $targets; do
    mkdir -p "$work/$t"
    seeds="corpus/$t"
    [ -d "regressions/$t" ] && seeds="$seeds regressions/$t"
    # shellcheck disable=SC2086
    cargo fuzz run --sanitizer none "$t" "$work/$t" $seeds -- \
        -max_total_time="$secs" -max_len=4096 -timeout=5 -rss_limit_mb=2048 -print_final_stats=1
done
