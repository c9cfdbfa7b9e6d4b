#!/usr/bin/env bash
# Upload throughput: diskseal-agent vs `aws s3 cp` against the same local S3 server, in one run.
#   SIZE_MIB (default 1024), JOBS (4), PART (8M), SERVER (s3s-fs if installed, else moto),
#   BIN (an agent binary to time instead of building target/release/diskseal-agent), RUNS (1).
# aws-cli is configured like the agent: 4 concurrent 8 MiB parts, path-style addressing.
# Besides wall time, it prints each client's user+sys CPU (/usr/bin/time) and the server's CPU during
# each upload (/proc/PID/stat): on this 2-core machine the server shares the cores with the client.
# Last, it times the server's CompleteMultipartUpload alone (boto3 sends the parts, unverified, then
# the Complete is timed): every client waits that long, so it bounds the ratio any client can reach.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${SIZE_MIB:-1024}
JOBS=${JOBS:-4}
PART=${PART:-8M}
command -v aws >/dev/null || { echo "aws-cli is not installed (pip install awscli)" >&2; exit 2; }
SERVER=${SERVER:-$(command -v s3s-fs >/dev/null && echo s3s-fs || echo moto)}
RUNS=${RUNS:-1}
if [[ -z ${BIN:-} ]]; then
    cargo build --release -q -p diskseal-agent
    BIN=target/release/diskseal-agent
fi
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
# The server's user+sys CPU so far, in seconds.
server_cpu() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$PID/stat"; }
# run NAME CMD...: wall time, the client's CPU and the server's CPU, as "wall user sys server".
run() {
    local name=$1; shift
    local s0; s0=$(server_cpu)
    local t0; t0=$(date +%s.%N)
    /usr/bin/time -f "%U %S" -o "$work/$name.time" "$@" >/dev/null
    local t1; t1=$(date +%s.%N)
    local s1; s1=$(server_cpu)
    echo "$(python3 -c "print(f'{$t1 - $t0:.3f}')") $(cat "$work/$name.time") $(python3 -c "print(f'{$s1 - $s0:.2f}')")"
}
for i in $(seq "$RUNS"); do
    a=$(run agent "$BIN" --json upload "$work/big.bin" "s3://bench/agent$i.bin" --s3-endpoint "$URL" --jobs "$JOBS" --part-size "$PART")
    c=$(run cli aws --endpoint-url "$URL" s3 cp "$work/big.bin" "s3://bench/cli$i.bin" --only-show-errors)
    python3 - "$SIZE_MIB" "$SERVER" "$a" "$c" <<'PY'
import sys
mib, server = int(sys.argv[1]), sys.argv[2]
(aw, au, as_, asrv), (cw, cu, cs, csrv) = (map(float, x.split()) for x in sys.argv[3:5])
print(f"{server}, {mib} MiB: diskseal-agent {aw:.2f} s ({mib / aw:.0f} MiB/s; CPU {au:.2f} user + {as_:.2f} sys, "
      f"server {asrv:.2f}), aws s3 cp {cw:.2f} s ({mib / cw:.0f} MiB/s; CPU {cu:.2f} user + {cs:.2f} sys, "
      f"server {csrv:.2f}); ratio {cw / aw:.2f}x")
PY
done

# The server's share: CompleteMultipartUpload of the same 1 GiB in the same parts, timed alone.
python3 - "$URL" "$work/big.bin" "$PART" "$JOBS" "$SERVER" <<'PY'
import sys, time, boto3
from concurrent.futures import ThreadPoolExecutor
from botocore.config import Config
url, path, part, jobs, server = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
size = int(part.rstrip("M")) << 20
s3 = boto3.client("s3", endpoint_url=url, config=Config(s3={"addressing_style": "path"}))
up = s3.create_multipart_upload(Bucket="bench", Key="complete.bin")["UploadId"]
def send(n):
    with open(path, "rb") as f:
        f.seek((n - 1) * size)
        body = f.read(size)
    return {"PartNumber": n, "ETag": s3.upload_part(Bucket="bench", Key="complete.bin", UploadId=up, PartNumber=n, Body=body)["ETag"]}
import os
count = -(-os.path.getsize(path) // size)
with ThreadPoolExecutor(jobs) as ex:
    parts = list(ex.map(send, range(1, count + 1)))
t = time.monotonic()
s3.complete_multipart_upload(Bucket="bench", Key="complete.bin", UploadId=up, MultipartUpload={"Parts": parts})
print(f"{server}: CompleteMultipartUpload of {count} parts alone takes {time.monotonic() - t:.2f} s (every client waits for it)")
PY
