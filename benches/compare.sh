#!/usr/bin/env bash
# Side-by-side speed comparison: diskseal vs its floor (on tmpfs `dd` with as many writers as diskseal
# has threads, writing as many bytes as the row's output; on a disk and for decrypt `cp` of the source;
# `cmp` for verify --against), `openssl speed`, `qemu-img convert` and the real `vhd-util copy -k`, on
# tmpfs and (with DISK_DIR) on a disk-backed file system with `sync` before each command and inside its
# timing. Each row runs right beside its own floor run, the pairs interleaved (P1 P2 P3, P2 P3 P1, ...),
# RUNS rounds, and every row shows the median and the spread (min-max) and the median of its per-round
# ratios: this machine's memory work varies 2-5× in phases of seconds, so one best-of-N figure is not a
# measurement. Checks diskseal's outputs for correctness and prints a markdown table of times and ratios.
#
#   DISK_DIR=/var/tmp bash benches/compare.sh            # 2 GiB inputs in /dev/shm and on /var/tmp's disk
#   SIZE_MIB=64 RUNS=5 bash benches/compare.sh          # smaller inputs, tmpfs only
#   SKIP_XTS=1 ...                                      # without the engine rows (criterion build)
#   TRACE=/tmp/t.log ...                                # log each run: start (epoch s), seconds, user, system, name
#   DROP_CACHES=1 ...                                   # (root) free the page cache first: with little free
#                                                       # memory, every new page waits for reclaim
#   QUIET_VM=1 ...                                      # (root, in a VM with free page reporting) see below
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-2048}
WORK=${WORK:-/dev/shm/diskseal-compare}
THREADS=$(nproc)

cargo build --release --locked -q
if [[ ${DROP_CACHES:-0} == 1 ]]; then sync && echo 3 > /proc/sys/vm/drop_caches; fi
DS=$PWD/target/release/diskseal
REPO=$PWD
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
cleanup() { rm -rf "$WORK" ${DISK_DIR:+"$DISK_DIR/diskseal-compare"}; }
trap cleanup EXIT
# In a VM with free page reporting (virtio-balloon), the guest hands the pages it frees back to the
# host, and the next use of such a page faults on the host, which has to find and zero one: on this
# machine's VM that made a third of the runs that fill new pages 2-7× slower, in system time, for every
# tool alike. QUIET_VM=1 stops the reporting for the run (an order above the largest the kernel has),
# touches the free memory once so the host backs all of it again, and restores the order at exit.
VM_QUIET=no
pr=/sys/module/page_reporting/parameters/page_reporting_order
if [[ ${QUIET_VM:-0} == 1 && -w $pr ]]; then
    old_order=$(cat "$pr")
    echo 11 >"$pr"
    trap 'cleanup; echo "$old_order" >"$pr"' EXIT
    fill=$(($(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo) - 2048))
    room=$(($(df --output=avail -m "$WORK" | tail -1) - 1024))
    fill=$((fill < room ? fill : room))
    dd if=/dev/zero of=fill bs=1M count="$fill" status=none
    rm -f fill
    VM_QUIET="yes ($fill MiB touched)"
fi
printf 'bench passphrase' > pw
head -c $((SIZE_MIB << 20)) /dev/urandom > src.raw
bytes=$((SIZE_MIB << 20))
FAST=(--pbkdf pbkdf2 --pbkdf-force-iterations 1000)

rows=()
RUNS=${RUNS:-5}
gbps() { printf '%.2f' "$(echo "$bytes / $1 / 1000000000" | bc -l)"; }
ratio() { printf '%.2f' "$(echo "$1 / $2" | bc -l)"; }
r2() { printf '%.2f' "$1"; }

if [[ ${SKIP_XTS:-0} != 1 ]]; then
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
fi

# group NAME CMD [NAME CMD...]: runs the commands interleaved $RUNS times in the current directory, each
# writing a new `o.*` file (removed before each run, so no tool pays for freeing an old one); with SYNC=1
# (disk-backed file systems) `sync` runs before each command and inside its timing. With PAIRS=1 the
# commands are pairs (floor, work): a pair runs back to back, so both meet the same phase of the machine
# (its slow phases last seconds here), floor then work in one round and work then floor in the next, and
# each round starts one pair later than the last (P1 P2 P3, P2 P3 P1, ...); otherwise each round starts one
# command later (A B C, B C A, ...).
# Sets MED[NAME] (the median, seconds), SPREAD[NAME] ("min-max"), TIMES[NAME] (every round's time, in
# round order) and CPU[NAME] (the median user + system time of the command's processes, sync excluded:
# what the work costs the cores, whatever the wait), and SLOW to "K of N": how many of the group's runs
# took over 1.5× their command's fastest run. This machine has phases in which a third of the runs that
# fill new pages take 2-7× as long (in system time only); a quiet run has next to none.
declare -A MED SPREAD TIMES CPU
SLOW=
group() {
    local -a names=() cmds=()
    while (($#)); do names+=("$1"); cmds+=("$2"); shift 2; done
    local -A all=() cpu=()
    local r k i s e d
    for r in $(seq "$RUNS"); do
        for k in "${!names[@]}"; do
            if ((${PAIRS:-0})); then
                i=$(((k / 2 * 2 + 2 * r) % ${#names[@]} + (k + r) % 2))
            else
                i=$(((k + r) % ${#names[@]}))
            fi
            rm -f o.*
            if ((SYNC)); then sync; fi
            s=$(date +%s.%N)
            /usr/bin/time -f '%U %S' -o cpu.time bash -c "${cmds[$i]}" >/dev/null 2>&1 || { echo "FAILED: ${names[$i]}: ${cmds[$i]}" >&2; exit 1; }
            if ((SYNC)); then sync; fi
            e=$(date +%s.%N)
            d=$(echo "$e - $s" | bc -l)
            all[$i]+=" $d"
            if [[ -n ${TRACE:-} ]]; then echo "$s $d $(cat cpu.time) ${names[$i]}" >>"$TRACE"; fi
            cpu[$i]+=" $(awk '{print $1 + $2}' cpu.time)"
        done
    done
    rm -f o.*
    local slow=0
    for i in "${!names[@]}"; do
        local sorted n
        sorted=$(tr ' ' '\n' <<<"${all[$i]}" | grep . | sort -g)
        n=$(wc -l <<<"$sorted")
        slow=$((slow + $(awk -v min="$(head -1 <<<"$sorted")" '$1 > 1.5 * min' <<<"$sorted" | wc -l)))
        TIMES[${names[$i]}]=${all[$i]}
        MED[${names[$i]}]=$(printf '%.3f' "$(sed -n "$(((n + 1) / 2))p" <<<"$sorted")")
        SPREAD[${names[$i]}]="$(printf '%.2f' "$(head -1 <<<"$sorted")")-$(printf '%.2f' "$(tail -1 <<<"$sorted")")"
        sorted=$(tr ' ' '\n' <<<"${cpu[$i]}" | grep . | sort -g)
        CPU[${names[$i]}]=$(printf '%.2f' "$(sed -n "$(((n + 1) / 2))p" <<<"$sorted")")
        printf '%-44s median %6s s (%s s, %s runs), CPU %s s\n' "${names[$i]}" "${MED[${names[$i]}]}" "${SPREAD[${names[$i]}]}" "$RUNS" "${CPU[${names[$i]}]}" >&2
    done
    SLOW="$slow of $((RUNS * ${#names[@]}))"
    echo "runs over 1.5× their command's fastest: $SLOW" >&2
}
# paired A B: the median and the min-max of A's time over B's in the same round (both from one group):
# slow and fast phases of the machine hit both commands of a round, so this is steadier than the ratio
# of the medians, which row prints beside it. Then the median ratio of the clean pairs: the rounds in
# which neither run took over 1.3× its command's fastest (a slow phase can hit one run of a pair and not
# the other, so in a noisy run the per-round ratios spread wide; the clean pairs do not).
paired() {
    local -a a b
    read -ra a <<<"${TIMES[$1]}"
    read -ra b <<<"${TIMES[$2]}"
    local i sorted n clean
    sorted=$(for i in "${!a[@]}"; do echo "${a[$i]} / ${b[$i]}" | bc -l; done | sort -g)
    n=$(wc -l <<<"$sorted")
    printf '%.2f× (rounds %.2f-%.2f' "$(sed -n "$(((n + 1) / 2))p" <<<"$sorted")" "$(head -1 <<<"$sorted")" "$(tail -1 <<<"$sorted")"
    clean=$(for i in "${!a[@]}"; do echo "${a[$i]} ${b[$i]}"; done | awk '
        { a[NR] = $1; b[NR] = $2; if (NR == 1 || $1 < ma) ma = $1; if (NR == 1 || $2 < mb) mb = $2 }
        END { for (i = 1; i <= NR; i++) if (a[i] <= 1.3 * ma && b[i] <= 1.3 * mb) print a[i] / b[i] }' | sort -g)
    n=$(grep -c . <<<"$clean" || true)
    if ((n > 0)); then
        printf '; %d clean pairs %.2f×' "$n" "$(sed -n "$(((n + 1) / 2))p" <<<"$clean")"
    else
        printf '; no clean pair'
    fi
}
# row WORK NAME FLOOR: a table row "work | median (spread) | floor | × floor (per round; of the medians)".
row() { rows+=("| $1 | ${MED[$2]} s (${SPREAD[$2]}; CPU ${CPU[$2]} s) | ${MED[$3]} s (${3%%, beside*}; CPU ${CPU[$3]} s) | $(paired "$2" "$3"); medians $(ratio "${MED[$2]}" "${MED[$3]}")×) |"); }

# The real vhd-util (see ../shared/oracles/vhd-util/README.md), beside the repository or its worktree.
VHD_UTIL=${VHD_UTIL:-$(ls "$REPO"/../shared/oracles/vhd-util/vhd-util "$REPO"/../../shared/oracles/vhd-util/vhd-util 2>/dev/null | head -1 || true)}
qemu-img convert -f raw -O vpc -o subformat=dynamic src.raw src.vhd
qemu-img convert -f raw -O qcow2 src.raw src.qcow2
head -c 64 /dev/urandom > dek
"$DS" encrypt -q "${FAST[@]}" --key-file pw src.raw enc.luks
"$DS" encrypt -q --profile ibm-vpc "${FAST[@]}" --key-file pw src.raw enc.qcow2
"$DS" verify -q --key-file pw --against src.raw enc.luks
qemu-img compare --object secret,id=s,file=pw --image-opts "driver=qcow2,encrypt.key-secret=s,file.filename=enc.qcow2" "driver=raw,file.filename=src.raw" >/dev/null
"$DS" encrypt -q --profile ibm-classic-vhd --key-file dek src.vhd ds.vhd
"$DS" verify -q --profile ibm-classic-vhd --key-file dek --against src.vhd ds.vhd
rm -f ds.vhd
cp src.raw copy.raw

# The rows: KEY, command, label. Each command writes one `o.*` file.
n=$THREADS
ROWS=(
    "luks2, 1 thread" "$DS encrypt -q --threads 1 ${FAST[*]} --key-file pw src.raw o.luks" "raw → LUKS2, 1 thread"
    "luks2, $n threads" "$DS encrypt -q ${FAST[*]} --key-file pw src.raw o.luks" "raw → LUKS2, $n threads"
    "luks1, $n threads" "$DS encrypt -q --profile luks1 ${FAST[*]} --key-file pw src.raw o.luks" "raw → LUKS1, $n threads"
    "ibm-classic-luks, $n threads" "$DS encrypt -q --profile ibm-classic-luks ${FAST[*]} --key-file dek src.raw o.luks" "raw → ibm-classic-luks, $n threads"
    "dense qcow2 -> luks2, $n threads" "$DS encrypt -q ${FAST[*]} --key-file pw src.qcow2 o.luks" "dense qcow2 → LUKS2, $n threads"
    "dynamic VHD -> luks2, $n threads" "$DS encrypt -q ${FAST[*]} --key-file pw src.vhd o.luks" "dynamic VHD → LUKS2, $n threads"
    "luks1 -O vhd, $n threads" "$DS encrypt -q --profile luks1 -O vhd ${FAST[*]} --key-file pw src.raw o.vhd" "raw → LUKS1 in a fixed VHD (-O vhd), $n threads"
    "ibm-vpc, 1 thread" "$DS encrypt -q --threads 1 --profile ibm-vpc ${FAST[*]} --key-file pw src.raw o.qcow2" "raw → ibm-vpc, 1 thread"
    "ibm-vpc, $n threads" "$DS encrypt -q --profile ibm-vpc ${FAST[*]} --key-file pw src.raw o.qcow2" "raw → ibm-vpc, $n threads"
    "ibm-classic-vhd, $n threads" "$DS encrypt -q --profile ibm-classic-vhd --key-file dek src.vhd o.vhd" "dynamic VHD → ibm-classic-vhd, $n threads"
)
if [[ -x $VHD_UTIL ]]; then ROWS+=("vhd-util copy -k" "$VHD_UTIL copy -n src.vhd -N o.vhdu -k dek" "the same by \`vhd-util copy -k\`"); fi
ROWS+=("qemu-img convert -O luks" "qemu-img convert -f raw -O luks --object secret,id=s,file=pw -o key-secret=s,iter-time=10 src.raw o.qluks" "the same raw → LUKS2 by \`qemu-img convert -O luks\`")

# The floor of a row on tmpfs is `dd` writing as many bytes as the row's output (whole MiB, rounded
# down), with as many writers as diskseal has threads: a LUKS2 output is the source plus a 16 MiB
# header. OUT_MIB[KEY] is that size, from one run of the row's command here.
declare -A OUT_MIB
for ((i = 0; i < ${#ROWS[@]}; i += 3)); do
    rm -f o.*
    bash -c "${ROWS[i + 1]}" >/dev/null 2>&1 || { echo "FAILED: ${ROWS[i]}: ${ROWS[i + 1]}" >&2; exit 1; }
    OUT_MIB[${ROWS[i]}]=$(($(stat -c %s o.* | paste -sd+ | bc) >> 20))
done
rm -f o.*
# ddn MIB: `dd` with $n writers writing MIB MiB of zeros into one new file, each its share.
ddn() {
    local mib=$1 k cmd="" at=0 share
    for k in $(seq 0 $((n - 1))); do
        share=$(((mib - at) / (n - k)))
        cmd+="dd if=/dev/zero of=o.dd bs=1M count=$share seek=$at conv=notrunc status=none & "
        at=$((at + share))
    done
    echo "${cmd}wait"
}

# Every row on one file system: $1 its name, SYNC=1 for a disk. Each row runs beside its own floor run
# (PAIRS=1): on tmpfs `dd` with $n writers writing the row's output size, on a disk `cp` of the source.
on_fs() {
    local fs=$1 i floor
    echo "== $fs (sync inside the timing: $SYNC), $RUNS interleaved rounds of pairs (floor, work)" >&2
    local -a cmds=("$fs: dd, 1 writer" "dd if=/dev/zero of=o.dd bs=4M count=$((SIZE_MIB / 4)) status=none" \
        "$fs: dd, $n writers" "$(ddn "$SIZE_MIB")" \
        "$fs: cp" "cp src.raw o.cp" "$fs: decrypt luks2 -> raw" "$DS decrypt -q --key-file pw enc.luks o.raw" \
        "$fs: cmp" "cmp src.raw copy.raw" "$fs: verify --against" "$DS verify -q --key-file pw --against src.raw enc.luks")
    for ((i = 0; i < ${#ROWS[@]}; i += 3)); do
        if [[ $SYNC == 0 ]]; then
            cmds+=("$fs: dd, $n writers, ${OUT_MIB[${ROWS[i]}]} MiB, beside ${ROWS[i]}" "$(ddn "${OUT_MIB[${ROWS[i]}]}")")
        else
            cmds+=("$fs: cp, beside ${ROWS[i]}" "cp src.raw o.cp")
        fi
        cmds+=("$fs: ${ROWS[i]}" "${ROWS[i + 1]}")
    done
    PAIRS=1 group "${cmds[@]}"
    rows+=("| **$fs** (${SIZE_MIB} MiB random; median of $RUNS interleaved rounds, min-max; each row's floor ran beside it; runs over 1.5× their command's fastest: $SLOW) | | | |")
    rows+=("| floor: \`cp\` / \`dd\` with $n writers / \`dd\` with 1 writer | ${MED[$fs: cp]} s (${SPREAD[$fs: cp]}; CPU ${CPU[$fs: cp]} s) / ${MED[$fs: dd, $n writers]} s (${SPREAD[$fs: dd, $n writers]}; CPU ${CPU[$fs: dd, $n writers]} s) / ${MED[$fs: dd, 1 writer]} s (${SPREAD[$fs: dd, 1 writer]}; CPU ${CPU[$fs: dd, 1 writer]} s) | | |")
    for ((i = 0; i < ${#ROWS[@]}; i += 3)); do
        if [[ $SYNC == 0 ]]; then floor="$fs: dd, $n writers, ${OUT_MIB[${ROWS[i]}]} MiB, beside ${ROWS[i]}"; else floor="$fs: cp, beside ${ROWS[i]}"; fi
        row "${ROWS[i + 2]}" "$fs: ${ROWS[i]}" "$floor"
    done
    row "decrypt LUKS2 → raw (floor: \`cp\`)" "$fs: decrypt luks2 -> raw" "$fs: cp"
    row "verify --against the source (floor: \`cmp\`)" "$fs: verify --against" "$fs: cmp"
}
SYNC=0 on_fs tmpfs
if [[ -n ${DISK_DIR:-} ]]; then
    # The same files on the disk-backed file system.
    mkdir -p "$DISK_DIR/diskseal-compare"
    cp src.raw src.vhd src.qcow2 dek pw enc.luks copy.raw "$DISK_DIR/diskseal-compare/"
    pushd "$DISK_DIR/diskseal-compare" >/dev/null
    SYNC=1 on_fs "disk ($(df --output=fstype . | tail -1 | xargs))"
    popd >/dev/null
fi
rm -f src.vhd src.qcow2 enc.luks enc.qcow2 copy.raw

echo "== sparse qcow2 (2 GiB, 512 MiB allocated) -> ibm-vpc, tmpfs" >&2
truncate -s 2G sp.raw
for i in 0 1 2 3; do dd if=src.raw of=sp.raw bs=1M count=128 skip=$((i * 128)) seek=$((i * 512)) conv=notrunc status=none; done
qemu-img convert -f raw -O qcow2 sp.raw sp.qcow2 && rm -f sp.raw
"$DS" encrypt -q --profile ibm-vpc "${FAST[@]}" --key-file pw sp.qcow2 ds.qcow2
qemu-img compare --object secret,id=s,file=pw --image-opts "driver=qcow2,encrypt.key-secret=s,file.filename=ds.qcow2" "driver=qcow2,file.filename=sp.qcow2" >/dev/null
rm -f ds.qcow2
SYNC=0 group "sparse qcow2 -> ibm-vpc" "$DS encrypt -q --profile ibm-vpc ${FAST[*]} --key-file pw sp.qcow2 o.qcow2" \
    "qemu-img convert, sparse qcow2 -> qcow2-LUKS" "qemu-img convert -f qcow2 -O qcow2 --object secret,id=s,file=pw -o encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10 sp.qcow2 o.q2"
rm -f sp.qcow2
rows+=("| **other inputs, tmpfs** | | | |")
rows+=("| 2 GiB qcow2 with 512 MiB allocated → ibm-vpc | ${MED[sparse qcow2 -> ibm-vpc]} s (${SPREAD[sparse qcow2 -> ibm-vpc]}) | qemu-img: ${MED[qemu-img convert, sparse qcow2 -> qcow2-LUKS]} s | $(ratio "${MED[qemu-img convert, sparse qcow2 -> qcow2-LUKS]}" "${MED[sparse qcow2 -> ibm-vpc]}")× faster |")

echo "== streamOptimized VMDK (what OVAs carry) -> LUKS2, tmpfs" >&2
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.raw so.vmdk
"$DS" encrypt -q "${FAST[@]}" --key-file pw so.vmdk ds.luks
"$DS" verify -q --key-file pw --against src.raw ds.luks
rm -f ds.luks
SYNC=0 group "streamOptimized VMDK -> luks2" "$DS encrypt -q ${FAST[*]} --key-file pw so.vmdk o.luks" \
    "qemu-img convert -f vmdk -O luks" "qemu-img convert -f vmdk -O luks --object secret,id=s,file=pw -o key-secret=s,iter-time=10 so.vmdk o.qluks"
rm -f so.vmdk
rows+=("| streamOptimized VMDK (${SIZE_MIB} MiB random) → LUKS2 | ${MED[streamOptimized VMDK -> luks2]} s (${SPREAD[streamOptimized VMDK -> luks2]}) | qemu-img: ${MED[qemu-img convert -f vmdk -O luks]} s | $(ratio "${MED[qemu-img convert -f vmdk -O luks]}" "${MED[streamOptimized VMDK -> luks2]}")× faster |")

echo "== peak RSS" >&2
rss() { /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -1; }
truncate -s 8G sparse.raw
printf 'data' | dd of=sparse.raw bs=1 seek=$((5 << 30)) conv=notrunc status=none
r_dense=$(rss "$DS" encrypt -q --force "${FAST[@]}" --key-file pw src.raw ds.luks); rm -f ds.luks
r_sparse=$(rss "$DS" encrypt -q --force "${FAST[@]}" --key-file pw sparse.raw ds.luks); rm -f ds.luks sparse.raw
r_vpc=$(rss "$DS" encrypt -q --force --profile ibm-vpc "${FAST[@]}" --key-file pw src.raw ds.qcow2); rm -f ds.qcow2
rows+=("| peak RSS (limit 64 MiB), LUKS2: ${SIZE_MIB} MiB dense / 8 GiB sparse input; ibm-vpc: ${SIZE_MIB} MiB dense | $((r_dense / 1024)) MiB / $((r_sparse / 1024)) MiB; $((r_vpc / 1024)) MiB | | |")

echo
echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F); free page reporting held back (QUIET_VM): $VM_QUIET"
echo
echo "| work | diskseal | other tool | ratio |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
