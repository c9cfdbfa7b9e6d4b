#!/usr/bin/env bash
# The 100 GiB ibm-vpc case (IBM VPC wants encrypted images of exactly 100 GiB; most hold a few GiB): a
# sparse raw source with DATA_MIB of random data spread over the disk, encrypted to ibm-vpc, then
# `qemu-img compare` (the reference: it skips what both sides leave unallocated) against diskseal's
# verify, verify --against, bundle (unlock + root hash + copy) and the agent's bundle verify --deep, run
# interleaved (A B C ... A B C ...) for RUNS rounds; prints the median and the spread (min-max) of each
# and its ratio to qemu-img compare's median. Twice: with the default keyslot KDF (what a new user gets:
# PBKDF2 for 2 s, in both tools) and with a 1000-iteration KDF (the data work alone).
#
#   DIR=/var/tmp/sparse bash benches/sparse.sh            # on a disk-backed file system
#   OLD=path/to/old/diskseal ...                          # one more row: that build's verify, 1 round
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
DATA_MIB=${DATA_MIB:-18}
DIR=${DIR:-$PWD/target/sparse-bench}
cargo build --release --locked -q -p diskseal -p diskseal-agent
DS=$PWD/target/release/diskseal
AGENT=$PWD/target/release/diskseal-agent
rm -rf "$DIR" && mkdir -p "$DIR" && cd "$DIR"
trap 'rm -rf "$DIR"' EXIT
printf 'bench passphrase' > pw
truncate -s 100G src.raw
# DATA_MIB pieces of 1 MiB spread evenly over the disk.
for i in $(seq 0 $((DATA_MIB - 1))); do
    dd if=/dev/urandom of=src.raw bs=1M count=1 seek=$((i * 102400 / DATA_MIB)) conv=notrunc status=none
done
export DISKSEAL_AGENT_HOME=$DIR/agent-home
recipient=$("$AGENT" init | grep -o 'age1[0-9a-z]*' | head -1)

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
declare -A T
time_of() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; e=$(date +%s.%N); echo "$e - $s" | bc -l; }

for kdf in default fast; do
    flags=(); [[ $kdf == fast ]] && flags=(--pbkdf-force-iterations 1000)
    rm -rf enc.qcow2 b
    "$DS" encrypt -q --profile ibm-vpc "${flags[@]}" --key-file pw src.raw enc.qcow2
    "$DS" bundle -q --profile ibm-vpc --recipient "$recipient" --key-file pw enc.qcow2 keep
    names=(qemu-img-compare verify verify-against bundle agent-deep)
    declare -A cmd=(
        [qemu-img-compare]="qemu-img compare --object secret,id=s,file=pw --image-opts driver=qcow2,encrypt.key-secret=s,file.filename=enc.qcow2 driver=raw,file.filename=src.raw"
        [verify]="$DS verify -q --profile ibm-vpc --key-file pw enc.qcow2"
        [verify-against]="$DS verify -q --profile ibm-vpc --key-file pw --against src.raw enc.qcow2"
        [bundle]="$DS bundle -q --force --profile ibm-vpc --recipient $recipient --key-file pw enc.qcow2 b"
        [agent-deep]="$AGENT -q bundle verify --deep keep"
    )
    declare -A all=()
    for r in $(seq "$RUNS"); do
        for n in "${names[@]}"; do
            sync
            # shellcheck disable=SC2086
            all[$n]+="$(time_of ${cmd[$n]}) "
        done
    done
    base=$(tr ' ' '\n' <<<"${all[qemu-img-compare]}" | grep . | median)
    for n in "${names[@]}"; do
        vals=$(tr ' ' '\n' <<<"${all[$n]}" | grep .)
        m=$(median <<<"$vals")
        printf '| %s KDF | %s | %.2f s (%.2f-%.2f) | %.2f× qemu-img compare |\n' "$kdf" "$n" "$m" \
            "$(sort -g <<<"$vals" | head -1)" "$(sort -g <<<"$vals" | tail -1)" "$(echo "$m / $base" | bc -l)"
    done
    if [[ -n ${OLD:-} && $kdf == fast ]]; then
        printf '| %s KDF | verify by %s (1 round) | %.2f s | |\n' "$kdf" "$OLD" \
            "$(time_of "$OLD" verify -q --profile ibm-vpc --key-file pw enc.qcow2)"
    fi
    rm -rf keep
done
