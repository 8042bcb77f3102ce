#!/usr/bin/env bash
# Crash loop: kill -9 the downloading daemon KILLS times (default 200) at random moments
# during one rate-shaped download, restarting it each time (the job is restored and resumes
# from its journal), and check after every kill that DIR/NAME is either absent or the complete,
# byte-identical file. Prints one summary line for RELIABILITY.md.
#   bench/killloop.sh [KILLS] [SIZE_MIB] [RATE_PER_SERVER]
set -euo pipefail
cd "$(dirname "$0")/.."
KILLS=${1:-200}
SIZE_MIB=${2:-1024}
RATE=${3:-1500000}
WORK=${WORK:-/tmp/arsnet-killloop}
cargo build --release --locked -q -p arsnetd -p arsnetctl
BIN=$PWD/target/release
rm -rf "$WORK" && mkdir -p "$WORK/src" "$WORK/out"
FILE=$WORK/src/payload.bin
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$FILE"
SUM=$(sha256sum "$FILE" | cut -d' ' -f1)

SRV_SOCK=$WORK/srv.sock
CLI_SOCK=$WORK/cli.sock
"$BIN/arsnetd" --socket "$SRV_SOCK" --state-dir "$WORK/srv-state" 2> "$WORK/srv.log" &
SRV_PID=$!
cli_pid=""
cleanup() {
    kill -9 "$SRV_PID" 2>/dev/null || true
    [ -n "$cli_pid" ] && kill -9 "$cli_pid" 2>/dev/null || true
}
trap cleanup EXIT
wait_socket() { for _ in $(seq 200); do [ -S "$1" ] && return 0; sleep 0.02; done; return 1; }
wait_socket "$SRV_SOCK"
PORTS=()
for _ in 1 2 3 4; do
    PORTS+=("$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')")
done
"$BIN/arsnetctl" --socket "$SRV_SOCK" serve -i 60 -n 4 -f "$FILE" -p "${PORTS[@]}" \
    --bind 127.0.0.1 --rate "$RATE" > /dev/null

start_client() {
    "$BIN/arsnetd" --socket "$CLI_SOCK" --state-dir "$WORK/cli-state" 2>> "$WORK/cli.log" &
    cli_pid=$!
    wait_socket "$CLI_SOCK"
}

wrong=0
checked=0
start_client
"$BIN/arsnetctl" --socket "$CLI_SOCK" fetch -o "$WORK/out" -a 127.0.0.1 -p "${PORTS[@]}" > /dev/null
started=$(date +%s.%N)
kills=0
while [ "$kills" -lt "$KILLS" ]; do
    sleep "$(( RANDOM % 2 )).$(( RANDOM % 10 ))$(( RANDOM % 10 ))"; sleep 0.15
    kill -9 "$cli_pid"
    wait "$cli_pid" 2>/dev/null || true
    kills=$((kills + 1))
    # The promise: DIR/NAME is absent, or complete and byte-identical.
    if [ -e "$WORK/out/payload.bin" ]; then
        checked=$((checked + 1))
        if [ "$(sha256sum "$WORK/out/payload.bin" | cut -d' ' -f1)" != "$SUM" ]; then
            wrong=$((wrong + 1))
            echo "kill $kills: WRONG FILE under the final name" >&2
        fi
        echo "the download completed after $kills kills: use a lower rate or a bigger file" >&2
        break
    fi
    rm -f "$CLI_SOCK"
    start_client
done
# Let it finish once more and compare.
"$BIN/arsnetctl" --socket "$CLI_SOCK" list > /dev/null
for _ in $(seq 600); do
    [ -e "$WORK/out/payload.bin" ] && break
    sleep 1
done
final=FAILED
if [ -e "$WORK/out/payload.bin" ] && [ "$(sha256sum "$WORK/out/payload.bin" | cut -d' ' -f1)" = "$SUM" ]; then
    final=ok
fi
secs=$(python3 -c "import time; print(int(time.time() - $started))")
leftovers=$(find "$WORK/out" -name '*.arsnet-*' | wc -l)
sent=$("$BIN/arsnetctl" --socket "$SRV_SOCK" --json servers | python3 -c 'import json,sys; print(sum(p["segments_sent"] for g in json.load(sys.stdin) for p in g["ports"]))')
total=$(( (SIZE_MIB * 1024 * 1024 + 1048575) / 1048576 ))
echo "killloop: $kills kill -9 of the client daemon during one ${SIZE_MIB} MiB download (4 servers x ${RATE} B/s): final file $final, wrong files under the final name $wrong (checked $checked), partial files left $leftovers, segments sent $sent for $total, ${secs} s"
