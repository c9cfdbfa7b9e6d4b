#!/usr/bin/env bash
# The main job on the bundled sample disk: build diskseal (release), encrypt fixtures/images/sample.raw
# into a LUKS2 image, prove the plaintext equals the source, and show the header.
# Output goes to target/demo/ (safe to run again).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked
bin=target/release/diskseal
out=target/demo
mkdir -p "$out"

"$bin" encrypt --force --key-file fixtures/images/sample.pass fixtures/images/sample.raw "$out/sample.luks"
"$bin" verify --key-file fixtures/images/sample.pass --against fixtures/images/sample.raw "$out/sample.luks"
"$bin" dump "$out/sample.luks"
if command -v cryptsetup >/dev/null; then
    cryptsetup open --test-passphrase --key-file fixtures/images/sample.pass "$out/sample.luks" &&
        echo "cryptsetup: the sample passphrase opens $out/sample.luks"
fi
