#!/usr/bin/env bash
# Fuzz every parser with cargo-fuzz (libFuzzer). Usage:
#   bash scripts/fuzz.sh                 # 10,000,000 executions per target
#   bash scripts/fuzz.sh 200000          # a given number of executions per target
#   bash scripts/fuzz.sh --seconds 600   # a time budget per target
#   bash scripts/fuzz.sh smoke           # a short run of each target (CI)
#   FUZZ_TARGETS="vmdk ova" bash scripts/fuzz.sh     # only these targets
#   FUZZ_SANITIZER=none bash scripts/fuzz.sh         # without AddressSanitizer: 3-12x the executions per
#                                        # second, for the targets whose code has no `unsafe` (see README)
# Seeds are in fuzz/seeds/<target> (see fuzz/README.md); new corpus entries go to fuzz/corpus/<target>
# (not committed); crashes go to fuzz/artifacts/<target>; each one found becomes a regression test.
# The toolchain here is stable: RUSTC_BOOTSTRAP lets cargo-fuzz use its -Z flags.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=(-runs=10000000)
case "${1:-}" in
    smoke) limit=(-runs=3000) ;;
    --seconds) limit=(-max_total_time="$2") ;;
    "") ;;
    *) limit=(-runs="$1") ;;
esac
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cd fuzz
mkdir -p logs
sanitizer=(-s "${FUZZ_SANITIZER:-address}")
for t in ${FUZZ_TARGETS:-$(cargo fuzz list)}; do
    mkdir -p "corpus/$t"
    max_len=65536
    [[ $t == luks_file ]] && max_len=300000
    [[ $t == vhdx ]] && max_len=100000
    [[ $t == vmdk || $t == ova ]] && max_len=200000
    echo "== fuzz $t: ${limit[*]}"
    if ! cargo fuzz run "${sanitizer[@]}" "$t" "corpus/$t" "seeds/$t" -- "${limit[@]}" -max_len="$max_len" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 >"logs/$t.log" 2>&1; then
        tail -40 "logs/$t.log" >&2
        echo "fuzz target $t failed (crash, leak, timeout or OOM): see fuzz/artifacts/$t" >&2
        exit 1
    fi
    grep -E "^stat::(number_of_executed_units|peak_rss_mb)" "logs/$t.log"
done
# The file-backed targets leave their per-process scratch file (…-PID) behind when libFuzzer exits:
# remove those of processes that are gone (another campaign may be running).
for f in /dev/shm/diskseal-fuzz-* "${TMPDIR:-/tmp}"/diskseal-fuzz-*; do
    [[ -e $f ]] || continue
    kill -0 "${f##*-}" 2>/dev/null || rm -f "$f"
done
