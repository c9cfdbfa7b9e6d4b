#!/usr/bin/env bash
# Upload throughput: diskseal-agent vs `aws s3 cp` against the same local S3 server, in one run.
#   SIZE_MIB (default 1024), JOBS (4), PART (8M), SERVER (s3s-fs if installed, else moto).
# aws-cli is configured like the agent: 4 concurrent 8 MiB parts, path-style addressing.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1024}
JOBS=${JOBS:-4}
PART=${PART:-8M}
command -v aws >/dev/null || { echo "aws-cli is not installed (pip install awscli)" >&2; exit 2; }
SERVER=${SERVER:-$(command -v s3s-fs >/dev/null && echo s3s-fs || echo moto)}
cargo build --release -q -p diskseal-agent
BIN=target/release/diskseal-agent
work=$(mktemp -d)
PID=
cleanup() { [[ -n $PID ]] && kill "$PID" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=SECRETBENCH AWS_DEFAULT_REGION=us-east-1
mkdir -p "$work/data"
if [[ $SERVER == s3s-fs ]]; then
    s3s-fs --host 127.0.0.1 --port "$port" --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$work/data" >"$work/server.log" 2>&1 &
else
    moto_server -H 127.0.0.1 -p "$port" >"$work/server.log" 2>&1 &
fi
PID=$!
URL=http://127.0.0.1:$port
for _ in $(seq 100); do curl -s -o /dev/null "$URL/" && break; sleep 0.1; done
cat >"$work/aws.ini" <<INI
[default]
region = us-east-1
s3 =
  multipart_threshold = 8MB
  multipart_chunksize = 8MB
  max_concurrent_requests = 4
  addressing_style = path
INI
export AWS_CONFIG_FILE=$work/aws.ini
aws --endpoint-url "$URL" s3 mb s3://bench >/dev/null
head -c $((SIZE_MIB << 20)) /dev/urandom >"$work/big.bin"
export DISKSEAL_AGENT_HOME=$work/home
t0=$(date +%s.%N)
"$BIN" --json upload "$work/big.bin" s3://bench/agent.bin --endpoint "$URL" --jobs "$JOBS" --part-size "$PART" >/dev/null
t1=$(date +%s.%N)
aws --endpoint-url "$URL" s3 cp "$work/big.bin" s3://bench/cli.bin --only-show-errors
t2=$(date +%s.%N)
python3 - "$SIZE_MIB" "$t0" "$t1" "$t2" "$SERVER" <<'PY'
import sys
mib, t0, t1, t2, server = int(sys.argv[1]), *map(float, sys.argv[2:5]), sys.argv[5]
a, c = t1 - t0, t2 - t1
print(f"{server}, {mib} MiB: diskseal-agent {a:.2f} s ({mib / a:.0f} MiB/s, sha256 + composite ETag checked), "
      f"aws s3 cp {c:.2f} s ({mib / c:.0f} MiB/s); ratio {c / a:.2f}x")
PY
