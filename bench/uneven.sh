#!/usr/bin/env bash
# Uneven servers: 4 servers limited to R, 2R, 4R, 8R bytes/s (8x spread), optionally with the
# fastest one dying half way. Compares ArsNet (--rate) with aria2 against nginx (limit_rate)
# on the same file. Ideal time = size / (15 R) (or a bit more when a server dies).
#   bench/uneven.sh [SIZE_MIB=256] [R_MIB=4] [KILL=0|1]
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-256}
R_MIB=${2:-4}
KILL=${3:-0}
WORK=${BENCH_DIR:-/tmp/arsnet-uneven}
source bench/lib.sh
R=$((R_MIB * 1024 * 1024))
MULT=(1 2 4 8)
# Ideal: all bandwidth used all the time. With KILL=1 the 8R server stops at half of the
# no-failure ideal, and the rest can only go at 7R.
FULL=$(echo "$SIZE_MIB / ($R_MIB * 15)" | bc -l)
if [ "$KILL" = 1 ]; then
    IDEAL=$(echo "$FULL / 2 + ($SIZE_MIB / 2) / ($R_MIB * 7)" | bc -l)
else
    IDEAL=$FULL
fi

"$BIN/arsnetd" --socket "$WORK/srv.sock" --state-dir "$WORK/srv-state" 2>"$WORK/srv.log" &
SRV=$!
"$BIN/arsnetd" --socket "$WORK/cli.sock" --state-dir "$WORK/cli-state" 2>"$WORK/cli.log" &
CLI=$!
trap 'kill $SRV $CLI 2>/dev/null; nginx -c "$WORK/nginx.conf" -s stop 2>/dev/null || true' EXIT
sleep 0.5
PORTS=()
for m in "${MULT[@]}"; do
    p=$(free_port); PORTS+=("$p")
    "$BIN/arsnetctl" --socket "$WORK/srv.sock" serve -i 60 -n 1 -f "$FILE" -p "$p" --bind 127.0.0.1 --rate $((R * m)) >/dev/null
done
KILLER=
if [ "$KILL" = 1 ]; then
    ( sleep "$(echo "$FULL / 2" | bc -l)"; "$BIN/arsnetctl" --socket "$WORK/srv.sock" stop-server "${PORTS[3]}" >/dev/null ) &
    KILLER=$!
fi
t0=$(date +%s.%N)
"$BIN/arsnetctl" --socket "$WORK/cli.sock" fetch -o "$WORK/out" -a 127.0.0.1 -p "${PORTS[@]}" --wait -i 60 >/dev/null
t1=$(date +%s.%N)
[ -z "$KILLER" ] || wait "$KILLER"
[ "$(verdict "$WORK/out/payload.bin")" = ok ] || { echo MISMATCH; exit 1; }
secs=$(echo "$t1 - $t0" | bc)
printf 'arsnet: %d MiB, servers %s x %d MiB/s, kill=%s: %.2f s (ideal %.2f s, %.0f%% of the sum of bandwidths)\n' \
    "$SIZE_MIB" "${MULT[*]}" "$R_MIB" "$KILL" "$secs" "$IDEAL" "$(echo "100 * $IDEAL / $secs" | bc -l)"

HPORTS=()
{
    echo "worker_processes 2; pid $WORK/nginx.pid; error_log $WORK/nginx.err;"
    echo "events {} http { access_log off; sendfile on;"
    for m in "${MULT[@]}"; do
        p=$(free_port); HPORTS+=("$p")
        echo "server { listen 127.0.0.1:$p; root $WORK/src; limit_rate $((R * m)); }"
    done
    echo "}"
} > "$WORK/nginx.conf"
nginx -c "$WORK/nginx.conf"
URLS=(); for p in "${HPORTS[@]}"; do URLS+=("http://127.0.0.1:$p/payload.bin"); done
KILLER=
if [ "$KILL" = 1 ]; then
    # Take the fastest mirror away half way: rewrite its port to refuse, then reload.
    ( sleep "$(echo "$FULL / 2" | bc -l)"
      sed -i "s/listen 127.0.0.1:${HPORTS[3]};.*/listen 127.0.0.1:${HPORTS[3]}; return 444; }/" "$WORK/nginx.conf"
      nginx -c "$WORK/nginx.conf" -s reload ) &
    KILLER=$!
fi
t0=$(date +%s.%N)
aria2c -q -d "$WORK/aria" ${ARIA2_OPTS:--s 4 -x 1 -k 1M} --file-allocation=none --allow-overwrite=true "${URLS[@]}" || true
t1=$(date +%s.%N)
[ -z "$KILLER" ] || wait "$KILLER"
ok=$(verdict "$WORK/aria/payload.bin")
secs=$(echo "$t1 - $t0" | bc)
printf 'aria2c: %d MiB, servers %s x %d MiB/s, kill=%s: %.2f s (ideal %.2f s, %.0f%% of the sum of bandwidths), result %s\n' \
    "$SIZE_MIB" "${MULT[*]}" "$R_MIB" "$KILL" "$secs" "$IDEAL" "$(echo "100 * $IDEAL / $secs" | bc -l)" "$ok"
