#!/usr/bin/env bash
# Loopback benchmark: one file served by 4 servers, fetched by ArsNet and by aria2 on the same
# machine. Prints one line per run: tool, size, seconds, MB/s, and for ArsNet the peak RSS of
# the serving and the fetching daemon. Usage:
#   bench/loopback.sh [SIZE_MIB=1024] [RUNS=3]
# Needs aria2 and nginx (installed from Debian's packages when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-1024}
RUNS=${2:-3}
WORK=${BENCH_DIR:-/tmp/arsnet-bench}

source bench/lib.sh
PORTS=(); for _ in 1 2 3 4; do PORTS+=("$(free_port)"); done
HPORTS=(); for _ in 1 2 3 4; do HPORTS+=("$(free_port)"); done

peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

# --- ArsNet: a serving daemon and a fetching daemon -----------------------------------------
"$BIN/arsnetd" --socket "$WORK/srv.sock" --state-dir "$WORK/srv-state" 2>"$WORK/srv.log" &
SRV=$!
"$BIN/arsnetd" --socket "$WORK/cli.sock" --state-dir "$WORK/cli-state" 2>"$WORK/cli.log" &
CLI=$!
trap 'kill $SRV $CLI 2>/dev/null; nginx -c "$WORK/nginx.conf" -s stop 2>/dev/null || true' EXIT
sleep 0.5
t0=$(date +%s.%N)
"$BIN/arsnetctl" --socket "$WORK/srv.sock" serve -i 60 -n 4 -f "$FILE" -p "${PORTS[@]}" --bind 127.0.0.1 >/dev/null
t1=$(date +%s.%N)
echo "arsnet serve (hash ${SIZE_MIB} MiB, first time): $(echo "$t1 - $t0" | bc) s"

for run in $(seq 1 "$RUNS"); do
    rm -rf "$WORK/out"
    t0=$(date +%s.%N)
    "$BIN/arsnetctl" --socket "$WORK/cli.sock" fetch -o "$WORK/out" -a 127.0.0.1 -p "${PORTS[@]}" --wait -i 60 >/dev/null
    t1=$(date +%s.%N)
    secs=$(echo "$t1 - $t0" | bc)
    [ "$(verdict "$WORK/out/payload.bin")" = ok ] || { echo "MISMATCH"; exit 1; }
    printf 'arsnet  run %d: %d MiB in %.2f s = %.0f MB/s; peak RSS server %d MiB, client %d MiB\n' \
        "$run" "$SIZE_MIB" "$secs" "$(echo "$SIZE_MIB * 1.048576 / $secs" | bc -l)" \
        $(( $(peak_kib $SRV) / 1024 )) $(( $(peak_kib $CLI) / 1024 ))
done

# --- aria2 against 4 nginx servers on the same file ------------------------------------------
{
    echo "worker_processes 4; pid $WORK/nginx.pid; error_log $WORK/nginx.err;"
    echo "events {} http { access_log off; sendfile on; tcp_nopush on;"
    for p in "${HPORTS[@]}"; do echo "server { listen 127.0.0.1:$p; root $WORK/src; }"; done
    echo "}"
} > "$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf"
URLS=(); for p in "${HPORTS[@]}"; do URLS+=("http://127.0.0.1:$p/payload.bin"); done
for run in $(seq 1 "$RUNS"); do
    rm -rf "$WORK/aria"
    t0=$(date +%s.%N)
    aria2c -q -d "$WORK/aria" -s 4 -x 1 -k 1M --file-allocation=none --allow-overwrite=true \
        --check-certificate=false "${URLS[@]}"
    t1=$(date +%s.%N)
    secs=$(echo "$t1 - $t0" | bc)
    [ "$(verdict "$WORK/aria/payload.bin")" = ok ] || { echo "aria2 MISMATCH"; exit 1; }
    printf 'aria2c  run %d: %d MiB in %.2f s = %.0f MB/s\n' "$run" "$SIZE_MIB" "$secs" \
        "$(echo "$SIZE_MIB * 1.048576 / $secs" | bc -l)"
done
