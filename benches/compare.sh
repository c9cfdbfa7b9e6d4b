#!/usr/bin/env bash
# Side-by-side speed comparison, all in one run on tmpfs: diskseal vs `openssl speed`, `qemu-img convert`
# and offline `cryptsetup reencrypt`. Checks diskseal's outputs for correctness, then prints a markdown
# table of times, GB/s and ratios. The machine may be noisy: compare ratios, not absolute figures.
#
#   bash benches/compare.sh            # 2 GiB inputs in /dev/shm
#   SIZE_MIB=512 RUNS=3 bash benches/compare.sh   # smaller inputs; best of 3 runs of every command
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-2048}
WORK=${WORK:-/dev/shm/diskseal-compare}
THREADS=$(nproc)

cargo build --release --locked -q
DS=$PWD/target/release/diskseal
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
trap 'rm -rf "$WORK"' EXIT
printf 'bench passphrase' > pw
head -c $((SIZE_MIB << 20)) /dev/urandom > src.raw
bytes=$((SIZE_MIB << 20))
FAST=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)

rows=()
RUNS=${RUNS:-2}
# time_cmd NAME OUT CMD...: the best wall time of $RUNS runs into $t; OUT is removed before each run so
# every tool writes a new file (replacing an old one would add the cost of freeing its pages); the
# function named by $PREP, if set, runs before each run, outside the timing.
time_cmd() {
    local name=$1 out=$2; shift 2
    local s e best=""
    for _ in $(seq "$RUNS"); do
        rm -f "$out"
        if [[ -n ${PREP:-} ]]; then "$PREP"; fi
        s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N)
        t=$(echo "$e - $s" | bc -l)
        if [[ -z $best ]] || (( $(echo "$t < $best" | bc -l) )); then best=$t; fi
    done
    t=$(printf '%.2f' "$best")
    printf '%-48s %8.2f s (best of %s)\n' "$name" "$t" "$RUNS" >&2
}
gbps() { printf '%.2f' "$(echo "$bytes / $1 / 1000000000" | bc -l)"; }
ratio() { printf '%.1f' "$(echo "$1 / $2" | bc -l)"; }
r2() { printf '%.2f' "$1"; }

echo "== XTS engine, 1 thread" >&2
ossl() { openssl speed -evp aes-256-xts -bytes "$1" -seconds 3 2>/dev/null | awk '/^AES-256-XTS/ {print $2}' | tr -d k; }
o4096=$(ossl 4096); o512=$(ossl 512)
crit=$(cd "$OLDPWD" && cargo bench --bench xts -- --quick 'aes256-xts/encrypt/' 2>/dev/null | grep -A2 'aes256-xts/encrypt/' | awk '/thrpt/ {print $0}')
d512=$(echo "$crit" | sed -n 1p | sed -E 's/.*\[[^ ]+ [^ ]+ ([0-9.]+) GiB\/s.*/\1/')
d4096=$(echo "$crit" | sed -n 2p | sed -E 's/.*\[[^ ]+ [^ ]+ ([0-9.]+) GiB\/s.*/\1/')
o4096g=$(r2 "$(echo "$o4096 * 1000 / 1000000000" | bc -l)"); o512g=$(r2 "$(echo "$o512 * 1000 / 1000000000" | bc -l)")
d4096g=$(r2 "$(echo "$d4096 * 1073741824 / 1000000000" | bc -l)"); d512g=$(r2 "$(echo "$d512 * 1073741824 / 1000000000" | bc -l)")
rows+=("| AES-256-XTS, 4096-byte units, 1 thread | ${d4096g} GB/s | openssl speed: ${o4096g} GB/s | $(ratio "$d4096g" "$o4096g")× |")
rows+=("| AES-256-XTS, 512-byte units, 1 thread | ${d512g} GB/s | openssl speed: ${o512g} GB/s | $(ratio "$d512g" "$o512g")× |")

echo "== raw -> LUKS2, ${SIZE_MIB} MiB" >&2
time_cmd "diskseal luks2, 1 thread" ds.luks "$DS" encrypt -q --threads 1 "${FAST[@]}" --key-file pw src.raw ds.luks; t1=$t
time_cmd "diskseal luks2, $THREADS threads" ds.luks "$DS" encrypt -q "${FAST[@]}" --key-file pw src.raw ds.luks; tn=$t
"$DS" verify -q --key-file pw --against src.raw ds.luks
rm -f ds.luks
time_cmd "qemu-img convert -O luks" q.luks qemu-img convert -f raw -O luks --object secret,id=s,file=pw -o key-secret=s,iter-time=10 src.raw q.luks; tq=$t
rm -f q.luks
cs_prep() { cp src.raw cs.img && truncate -s +32M cs.img; }
PREP=cs_prep time_cmd "cryptsetup reencrypt --encrypt (offline)" cs.img cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 32M \
    --force-offline-reencrypt --batch-mode --key-file pw --pbkdf pbkdf2 --pbkdf-force-iterations 1000 cs.img; tc=$t
rm -f cs.img
rows+=("| raw → LUKS2, ${SIZE_MIB} MiB random, $THREADS threads | ${tn} s ($(gbps "$tn") GB/s) | qemu-img convert -O luks: ${tq} s | $(ratio "$tq" "$tn")× |")
rows+=("| same | | cryptsetup reencrypt --encrypt: ${tc} s | $(ratio "$tc" "$tn")× |")
rows+=("| raw → LUKS2, 1 → $THREADS threads | ${t1} s → ${tn} s | | $(ratio "$t1" "$tn")× scaling |")

echo "== raw -> ibm-vpc qcow2" >&2
time_cmd "diskseal ibm-vpc" ds.qcow2 "$DS" encrypt -q --profile ibm-vpc "${FAST[@]}" --key-file pw src.raw ds.qcow2; tv=$t
qemu-img compare --object secret,id=s,file=pw --image-opts "driver=qcow2,encrypt.key-secret=s,file.filename=ds.qcow2" "driver=raw,file.filename=src.raw" >/dev/null
rm -f ds.qcow2
time_cmd "qemu-img convert -O qcow2 encrypt.format=luks" q.qcow2 qemu-img convert -f raw -O qcow2 --object secret,id=s,file=pw \
    -o encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10 src.raw q.qcow2; tqv=$t
rm -f q.qcow2
rows+=("| raw → ibm-vpc qcow2-LUKS, ${SIZE_MIB} MiB | ${tv} s ($(gbps "$tv") GB/s) | qemu-img: ${tqv} s | $(ratio "$tqv" "$tv")× |")

echo "== dynamic VHD -> ibm-classic-vhd (vhd-util layout)" >&2
qemu-img convert -f raw -O vpc -o subformat=dynamic src.raw src.vhd
head -c 64 /dev/urandom > dek
time_cmd "diskseal ibm-classic-vhd" ds.vhd "$DS" encrypt -q --profile ibm-classic-vhd --key-file dek src.vhd ds.vhd; tcv=$t
"$DS" verify -q --profile ibm-classic-vhd --key-file dek --against src.vhd ds.vhd
rm -f ds.vhd
if command -v vhd-util >/dev/null; then
    time_cmd "vhd-util copy -k" vu.vhd vhd-util copy -n src.vhd -N vu.vhd -k dek; tvu=$t; vu="vhd-util copy -k: ${tvu} s"
    rm -f vu.vhd
else
    # vhd-util only builds/runs on CentOS-like systems; its figure from vhd-util.md (1 GiB, /dev/shm): 3.07 s.
    tvu=$(echo "3.07 * $SIZE_MIB / 1024" | bc -l); vu="vhd-util copy -k (not installed; 3.07 s/GiB from vhd-util.md, scaled): $(r2 "$tvu") s"
fi
rows+=("| dynamic VHD → ibm-classic-vhd, ${SIZE_MIB} MiB random | ${tcv} s ($(gbps "$tcv") GB/s) | ${vu} | $(ratio "$tvu" "$tcv")× |")
rm -f src.vhd
time_cmd "cp (floor)" cp.raw cp src.raw cp.raw; rm -f cp.raw
rows+=("| floor: \`cp\` of the ${SIZE_MIB} MiB source on the same tmpfs | ${t} s | | |")

echo "== sparse qcow2 (2 GiB, 512 MiB allocated) -> ibm-vpc" >&2
truncate -s 2G sp.raw
for i in 0 1 2 3; do dd if=src.raw of=sp.raw bs=1M count=128 skip=$((i * 128)) seek=$((i * 512)) conv=notrunc status=none; done
qemu-img convert -f raw -O qcow2 sp.raw sp.qcow2 && rm -f sp.raw
time_cmd "diskseal ibm-vpc from sparse qcow2" ds.qcow2 "$DS" encrypt -q --profile ibm-vpc "${FAST[@]}" --key-file pw sp.qcow2 ds.qcow2; ts=$t
qemu-img compare --object secret,id=s,file=pw --image-opts "driver=qcow2,encrypt.key-secret=s,file.filename=ds.qcow2" "driver=qcow2,file.filename=sp.qcow2" >/dev/null
rm -f ds.qcow2
time_cmd "qemu-img convert (same)" q.qcow2 qemu-img convert -f qcow2 -O qcow2 --object secret,id=s,file=pw \
    -o encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10 sp.qcow2 q.qcow2; tqs=$t
rm -f q.qcow2 sp.qcow2
rows+=("| 2 GiB qcow2 with 512 MiB allocated → ibm-vpc | ${ts} s | qemu-img: ${tqs} s | $(ratio "$tqs" "$ts")× |")

echo "== peak RSS" >&2
rss() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1; }
truncate -s 8G sparse.raw
printf 'data' | dd of=sparse.raw bs=1 seek=$((5 << 30)) conv=notrunc status=none
r_dense=$(rss "$DS" encrypt -q --force "${FAST[@]}" --key-file pw src.raw ds.luks); rm -f ds.luks
r_sparse=$(rss "$DS" encrypt -q --force "${FAST[@]}" --key-file pw sparse.raw ds.luks); rm -f ds.luks sparse.raw
rows+=("| peak RSS, ${SIZE_MIB} MiB dense / 8 GiB sparse input | $((r_dense / 1024)) MiB / $((r_sparse / 1024)) MiB | | |")

echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo
echo "| work | diskseal | other tool | ratio |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
