#!/usr/bin/env bash
# Fuzz check for CI and releases: builds every target once (stable, no
# sanitizer), then runs each for SECONDS seconds, PARALLEL targets at a time.
# libFuzzer first replays the committed corpus (fuzz/corpus/<target>, read
# only) and fails on any input that crashes; new inputs go to a temp dir, so
# the checkout stays clean. A crash prints the target's full log and the
# reproducer path (fuzz/artifacts/<target>/); otherwise one line per target.
#
# Usage: fuzz/ci.sh [SECONDS per target, default 60] [PARALLEL, default 2]
#   CI: fuzz/ci.sh 30 2      release check: fuzz/ci.sh 600
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
parallel="${2:-2}"
rss_limit_mb=2048

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo fuzz build -s none
bin_dir="target/x86_64-unknown-linux-gnu/release"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Runs one target; exit status 0 when it found nothing.
fuzz_one() {
    local target="$1"
    mkdir -p "$work/$target" "artifacts/$target"
    "$bin_dir/$target" -max_total_time="$seconds" -rss_limit_mb="$rss_limit_mb" \
        -artifact_prefix="artifacts/$target/" -print_final_stats=1 \
        "$work/$target" "corpus/$target" >"$work/$target.log" 2>&1
}

# One summary line: committed inputs replayed, executions, coverage.
summary() {
    local target="$1" log="$work/$1.log"
    local inputs execs cov
    inputs="$(find "corpus/$target" -type f | wc -l)"
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 || true)"
    echo "fuzz $target: replayed $inputs corpus inputs, $execs runs in ${seconds} s, ${cov:-cov: ?}, no crash"
}

failed=0
mapfile -t targets < <(cargo fuzz list)
for ((i = 0; i < ${#targets[@]}; i += parallel)); do
    batch=("${targets[@]:i:parallel}")
    pids=()
    for target in "${batch[@]}"; do
        fuzz_one "$target" &
        pids+=("$!")
    done
    for j in "${!batch[@]}"; do
        target="${batch[$j]}"
        if wait "${pids[$j]}"; then
            summary "$target"
        else
            echo "fuzz $target: FAILED; log follows (reproducer under fuzz/artifacts/$target/)"
            cat "$work/$target.log"
            failed=1
        fi
    done
done
exit "$failed"
