#!/usr/bin/env bash
# The whole test suite. Installs the oracle tools the tests drive (cryptsetup, veritysetup, qemu-img, age, softhsm2, opensc) when they are
# missing and this runs as root; otherwise the oracle tests say SKIPPED-ORACLE and pass.
# Runs every check even after one fails, and ends with one line "N passed, M failed": N and M sum the
# results of every test binary; M also counts each check that failed as a whole (fmt, clippy, rustdoc,
# the README's install step, a test build that did not compile, the fuzz smoke run). Exit 1 when M > 0.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cryptsetup >/dev/null || need+=(cryptsetup-bin)
# veritysetup (cryptsetup-bin too) is the reference for the manifests' dm-verity root hash.
command -v veritysetup >/dev/null || need+=(cryptsetup-bin)
command -v qemu-img >/dev/null || need+=(qemu-utils)
[[ -x /usr/bin/time ]] || need+=(time)
command -v age >/dev/null || need+=(age)
command -v softhsm2-util >/dev/null || need+=(softhsm2)
command -v pkcs11-tool >/dev/null || need+=(opensc)
if ((${#need[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "installing test tools: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "warning: missing ${need[*]}; oracle tests will be skipped (run as root to install them)" >&2
    fi
fi

# AWS KMS tests talk to moto's server (KMS with SigV4 checks); boto3 sets up its user and key.
if ! command -v moto_server >/dev/null || ! python3 -c 'import boto3' 2>/dev/null; then
    python3 -m pip install -q 'moto[server]' boto3 || echo "warning: moto/boto3 not installed; AWS KMS tests will be skipped" >&2
fi

# IBM's official Python SDKs, pinned, in a venv: the agent's contract tests (agent/tests/contract.rs) run
# them against the fake IBM servers and hold the agent's requests to theirs.
sdk_venv=target/ibm-sdk-venv
sdk_pins=(softlayer==6.2.9 ibm-vpc==0.36.0 ibm-cloud-sdk-core==3.28.0 keyprotect==3.0.1 ibm-cos-sdk==2.16.2 boto3==1.44.5)
if [[ "$(cat "$sdk_venv/pins" 2>/dev/null)" != "${sdk_pins[*]}" ]]; then
    python3 -m venv "$sdk_venv" && "$sdk_venv/bin/pip" install -q "${sdk_pins[@]}" \
        && echo "${sdk_pins[*]}" > "$sdk_venv/pins" \
        || echo "warning: IBM SDKs not installed; the agent's contract tests will be skipped" >&2
fi

# The strict S3 server the upload tests also run against (SigV4 and checksum checks); 0.14.1 because
# later versions need a newer rustc. Takes about 6 minutes to build on 2 cores the first time.
if ! command -v s3s-fs >/dev/null; then
    cargo install s3s-fs@0.14.1 --locked --features binary || echo "warning: s3s-fs not installed; upload tests run against moto only" >&2
fi

failed_checks=0
check() {
    if ! "$@"; then
        echo "FAILED: $*" >&2
        failed_checks=$((failed_checks + 1))
    fi
}

check cargo fmt --all -- --check
check cargo clippy --locked --workspace --all-targets -q -- -D warnings
check env RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps -q

# The README's install step, into a throw-away root; --debug reuses the test build (the README's
# command builds the same with the release profile).
root=$(mktemp -d)
log=$(mktemp)
trap 'rm -rf "$root" "$log"' EXIT
installed() {
    cargo install --locked --quiet --debug --path . --root "$root" &&
        cargo install --locked --quiet --debug --path agent --root "$root" &&
        "$root/bin/diskseal" --version && "$root/bin/diskseal-agent" --version
}
check installed

test_rc=0
cargo test --locked --workspace --all-targets --no-fail-fast 2>&1 | tee "$log" || test_rc=$?
read -r passed failed < <(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed;.*/\1 \2/p' "$log" |
    awk '{p += $1; f += $2} END {print p + 0, f + 0}')
if ((test_rc != 0 && failed == 0)); then
    echo "FAILED: cargo test (exit $test_rc, no failed test reported: a build error?)" >&2
    failed_checks=$((failed_checks + 1))
fi

# A short run of every fuzz target (the long runs: bash scripts/fuzz.sh).
check bash scripts/fuzz.sh smoke

failed=$((failed + failed_checks))
echo "$passed passed, $failed failed"
((failed == 0))
