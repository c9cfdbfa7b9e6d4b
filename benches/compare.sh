#!/usr/bin/env bash
# Side-by-side speed comparison, all in one run on tmpfs: diskseal vs `openssl speed`, `qemu-img convert`
# and offline `cryptsetup reencrypt`. Checks diskseal's outputs for correctness, then prints a markdown
# table of times, GB/s and ratios. The machine may be noisy: compare ratios, not absolute figures.
# It also times the floor every tool shares, writing a new file of the output's size on the same tmpfs
# (`dd` from /dev/zero, 1 and 2 writers), and prints for each comparison the largest ratio that floor
# allows: the other tool's time over the floor.
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
# time_cmd NAME OUT CMD...: the best wall time of $RUNS runs into $t and that run's user and system CPU
# seconds into $cpu; OUT is removed before each run so every tool writes a new file (replacing an old one
# would add the cost of freeing its pages); the function named by $PREP, if set, runs before each run,
# outside the timing.
time_cmd() {
    local name=$1 out=$2; shift 2
    local w u s best="" bcpu=""
    for _ in $(seq "$RUNS"); do
        rm -f "$out"
        if [[ -n ${PREP:-} ]]; then "$PREP"; fi
        /usr/bin/time -f '%e %U %S' -o time.out "$@" >/dev/null 2>&1
        read -r w u s < <(tail -1 time.out)
        if [[ -z $best ]] || (( $(echo "$w < $best" | bc -l) )); then best=$w; bcpu="user $u s, sys $s s"; fi
    done
    t=$(printf '%.2f' "$best"); cpu=$bcpu
    printf '%-48s %8.2f s (best of %s; %s)\n' "$name" "$t" "$RUNS" "$cpu" >&2
}
# The least time any tool needs to create an output of the source's size here: `dd` from /dev/zero
# into a new file on the same tmpfs, with one writer or with two writers filling one half each.
quarter=$((SIZE_MIB / 4)); eighth=$((SIZE_MIB / 8))
FLOOR1="dd if=/dev/zero of=fl.bin bs=4M count=$quarter status=none"
FLOOR2="dd if=/dev/zero of=fl.bin bs=4M count=$eighth conv=notrunc status=none & dd if=/dev/zero of=fl.bin bs=4M count=$eighth seek=$eighth conv=notrunc status=none; wait"
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

echo "== floors: what writing the output alone costs on this file system" >&2
time_cmd "cp (floor)" cp.raw cp src.raw cp.raw; tcp=$t; rm -f cp.raw
time_cmd "write floor, 1 writer (dd)" fl.bin bash -c "$FLOOR1"; tf1=$t
time_cmd "write floor, 2 writers (dd)" fl.bin bash -c "$FLOOR2"; tf2=$t; rm -f fl.bin
rows+=("| floor: \`cp\` of the ${SIZE_MIB} MiB source on the same tmpfs | ${tcp} s | | |")
rows+=("| floor: writing ${SIZE_MIB} MiB of zeros to a new file there (\`dd\`), 1 / 2 writers | ${tf1} s / ${tf2} s | | $(ratio "$tf1" "$tf2")× scaling |")
rows+=("| (every \"at most\" below: the other tool's time over this 2-writer floor) | | | |")

echo "== raw -> LUKS2, ${SIZE_MIB} MiB" >&2
time_cmd "diskseal luks2, 1 thread" ds.luks "$DS" encrypt -q --threads 1 "${FAST[@]}" --key-file pw src.raw ds.luks; t1=$t
time_cmd "diskseal luks2, $THREADS threads" ds.luks "$DS" encrypt -q "${FAST[@]}" --key-file pw src.raw ds.luks; tn=$t; cpun=$cpu
"$DS" verify -q --key-file pw --against src.raw ds.luks
rm -f ds.luks
time_cmd "qemu-img convert -O luks" q.luks qemu-img convert -f raw -O luks --object secret,id=s,file=pw -o key-secret=s,iter-time=10 src.raw q.luks; tq=$t
rm -f q.luks
cs_prep() { cp src.raw cs.img && truncate -s +32M cs.img; }
PREP=cs_prep time_cmd "cryptsetup reencrypt --encrypt (offline)" cs.img cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 32M \
    --force-offline-reencrypt --batch-mode --key-file pw --pbkdf pbkdf2 --pbkdf-force-iterations 1000 cs.img; tc=$t
rm -f cs.img
rows+=("| raw → LUKS2, ${SIZE_MIB} MiB random, $THREADS threads | ${tn} s ($(gbps "$tn") GB/s; ${cpun}) | qemu-img convert -O luks: ${tq} s | $(ratio "$tq" "$tn")× (at most $(ratio "$tq" "$tf2")× here) |")
rows+=("| same | | cryptsetup reencrypt --encrypt: ${tc} s | $(ratio "$tc" "$tn")× (at most $(ratio "$tc" "$tf2")× here) |")
rows+=("| raw → LUKS2, 1 → $THREADS threads | ${t1} s → ${tn} s | | $(ratio "$t1" "$tn")× scaling (the floor's: $(ratio "$tf1" "$tf2")×) |")

echo "== raw -> ibm-vpc qcow2" >&2
time_cmd "diskseal ibm-vpc" ds.qcow2 "$DS" encrypt -q --profile ibm-vpc "${FAST[@]}" --key-file pw src.raw ds.qcow2; tv=$t
qemu-img compare --object secret,id=s,file=pw --image-opts "driver=qcow2,encrypt.key-secret=s,file.filename=ds.qcow2" "driver=raw,file.filename=src.raw" >/dev/null
rm -f ds.qcow2
time_cmd "qemu-img convert -O qcow2 encrypt.format=luks" q.qcow2 qemu-img convert -f raw -O qcow2 --object secret,id=s,file=pw \
    -o encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10 src.raw q.qcow2; tqv=$t
rm -f q.qcow2
rows+=("| raw → ibm-vpc qcow2-LUKS, ${SIZE_MIB} MiB | ${tv} s ($(gbps "$tv") GB/s) | qemu-img: ${tqv} s | $(ratio "$tqv" "$tv")× (at most $(ratio "$tqv" "$tf2")× here) |")

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
rows+=("| dynamic VHD → ibm-classic-vhd, ${SIZE_MIB} MiB random | ${tcv} s ($(gbps "$tcv") GB/s) | ${vu} | $(ratio "$tvu" "$tcv")× (at most $(ratio "$tvu" "$tf2")× here) |")
rm -f src.vhd

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
tf512=$(r2 "$(echo "$tf2 * 512 / $SIZE_MIB" | bc -l)")
rows+=("| 2 GiB qcow2 with 512 MiB allocated → ibm-vpc | ${ts} s | qemu-img: ${tqs} s | $(ratio "$tqs" "$ts")× (writing 512 MiB here: ≈ ${tf512} s, so at most $(ratio "$tqs" "$tf512")×) |")

echo "== streamOptimized VMDK (what OVAs carry) -> LUKS2" >&2
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.raw so.vmdk
time_cmd "diskseal luks2 from streamOptimized VMDK" ds.luks "$DS" encrypt -q "${FAST[@]}" --key-file pw so.vmdk ds.luks; tso=$t
"$DS" verify -q --key-file pw --against src.raw ds.luks
rm -f ds.luks
time_cmd "qemu-img convert -f vmdk -O luks" q.luks qemu-img convert -f vmdk -O luks --object secret,id=s,file=pw -o key-secret=s,iter-time=10 so.vmdk q.luks; tqso=$t
rm -f q.luks so.vmdk
rows+=("| streamOptimized VMDK (${SIZE_MIB} MiB random) → LUKS2 | ${tso} s ($(gbps "$tso") GB/s) | qemu-img convert -O luks: ${tqso} s | $(ratio "$tqso" "$tso")× (inflating grains: at most $(ratio "$tqso" "$tf2")× here) |")

echo "== peak RSS" >&2
rss() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1; }
truncate -s 8G sparse.raw
printf 'data' | dd of=sparse.raw bs=1 seek=$((5 << 30)) conv=notrunc status=none
r_dense=$(rss "$DS" encrypt -q --force "${FAST[@]}" --key-file pw src.raw ds.luks); rm -f ds.luks
r_sparse=$(rss "$DS" encrypt -q --force "${FAST[@]}" --key-file pw sparse.raw ds.luks); rm -f ds.luks sparse.raw
r_vpc=$(rss "$DS" encrypt -q --force --profile ibm-vpc "${FAST[@]}" --key-file pw src.raw ds.qcow2); rm -f ds.qcow2
rows+=("| peak RSS, LUKS2: ${SIZE_MIB} MiB dense / 8 GiB sparse input; ibm-vpc: ${SIZE_MIB} MiB dense | $((r_dense / 1024)) MiB / $((r_sparse / 1024)) MiB; $((r_vpc / 1024)) MiB | | |")

echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo
echo "| work | diskseal | other tool | ratio |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
