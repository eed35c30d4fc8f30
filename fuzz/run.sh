#!/usr/bin/env bash
# Runs every fuzz target for a short, bounded time from the committed seeds (fuzz/seeds/<target>/),
# growing a scratch corpus in fuzz/corpus/<target>/ (git-ignored). Exits non-zero if any target
# crashes, times out or runs out of memory; libFuzzer's reproducer is then in
# fuzz/artifacts/<target>/.
#
#   fuzz/run.sh                   every target, FUZZ_SECONDS (default 20) seconds each
#   fuzz/run.sh csv_input ...     only these targets
#   fuzz/run.sh --findings        replay the saved reproducers in fuzz/findings/<target>/ once
#                                 (fails while any of them still crashes)
#
# Environment: FUZZ_SECONDS, FUZZ_TOOLCHAIN (default nightly), CARGO_BUILD_JOBS.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir/.."
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
seconds="${FUZZ_SECONDS:-20}"
all=(model_json weights_safetensors optimizer_state rows_safetensors csv_input parquet_input infer_request grpc_request binary_request)

replay=0
targets=()
for arg in "$@"; do
    case "$arg" in
        --findings) replay=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) targets+=("$arg") ;;
    esac
done
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

# cargo-fuzz needs a nightly toolchain and the cargo-fuzz subcommand; install what is missing.
if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
    rustup toolchain install "$toolchain" --profile minimal
fi
if ! cargo "+$toolchain" fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# The targets that read files write them to std::env::temp_dir(): keep that inside fuzz/target.
export TMPDIR="$fuzz_dir/target/tmp"
mkdir -p "$TMPDIR"

# -a: debug assertions, so that integer overflow panics instead of wrapping.
cargo "+$toolchain" fuzz build -a

limits=(-rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 -max_len=65536)
failed=()
for t in "${targets[@]}"; do
    if [ "$replay" = 1 ]; then
        dir="fuzz/findings/$t"
        [ -d "$dir" ] || continue
        files=("$dir"/*)
        [ -e "${files[0]}" ] || continue
        echo "== $t: replaying ${#files[@]} saved reproducer(s)"
        cargo "+$toolchain" fuzz run -a "$t" "${files[@]}" -- "${limits[@]}" \
            || failed+=("$t")
    else
        mkdir -p "fuzz/corpus/$t"
        echo "== $t: ${seconds}s"
        cargo "+$toolchain" fuzz run -a "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- "${limits[@]}" \
            -max_total_time="$seconds" -print_final_stats=1 \
            || failed+=("$t")
    fi
done
rm -rf "$TMPDIR"/pepnet-fuzz-*

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz/run.sh: failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz/run.sh: all targets passed"
