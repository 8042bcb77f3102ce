#!/usr/bin/env bash
# Separate hosts over shaped links: 4 server namespaces, each joined to a client namespace by
# a veth pair whose server side is shaped with tc htb to R, 2R, 4R and 8R Mbit/s. ArsNet
# (one arsnetd per server host, one on the client) and aria2 (nginx on each server host) fetch
# the same file. Needs root, iproute2 and tc (no netem). Usage:
#   bench/netns.sh [SIZE_MIB=256] [R_MBIT=40] [KILL=0|1]
# With MIRRORS=1 in the environment, ArsNet also fetches from the same 4 nginx mirrors aria2
# used (plus the ArsNet server on link 1 to name the content: a job needs one), after aria2.
# All addresses are on veth links between namespaces this script creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-256}
R=${2:-40}
KILL=${3:-0}
WORK=${BENCH_DIR:-/tmp/arsnet-netns}
MULT=(1 2 4 8)
source bench/lib.sh

cleanup() {
    for k in 1 2 3 4; do ip netns pids "ars-s$k" 2>/dev/null | xargs -r kill 2>/dev/null || true; done
    ip netns pids ars-c 2>/dev/null | xargs -r kill 2>/dev/null || true
    sleep 0.3
    for k in 1 2 3 4; do ip netns del "ars-s$k" 2>/dev/null || true; done
    ip netns del ars-c 2>/dev/null || true
}
trap cleanup EXIT
cleanup

ip netns add ars-c
ip -n ars-c link set lo up
for k in 1 2 3 4; do
    ns=ars-s$k
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "c$k" netns ars-c type veth peer name "s$k" netns "$ns"
    ip -n ars-c addr add "192.0.2.$((k * 4 + 1))/30" dev "c$k"   # TEST-NET-1, our links only
    ip -n "$ns" addr add "192.0.2.$((k * 4 + 2))/30" dev "s$k"
    ip -n ars-c link set "c$k" up
    ip -n "$ns" link set "s$k" up
    rate=$((R * MULT[k - 1]))
    ip netns exec "$ns" tc qdisc add dev "s$k" root handle 1: htb default 10 r2q 1000
    ip netns exec "$ns" tc class add dev "s$k" parent 1: classid 1:10 htb rate "${rate}mbit" ceil "${rate}mbit"
done
SUM_MBIT=$((R * 15))
FULL=$(echo "$SIZE_MIB * 8 * 1.048576 / $SUM_MBIT" | bc -l)
if [ "$KILL" = 1 ]; then
    IDEAL=$(echo "$FULL / 2 + ($SIZE_MIB * 8 * 1.048576 / 2) / ($R * 7)" | bc -l)
else
    IDEAL=$FULL
fi

# --- ArsNet ------------------------------------------------------------------------------
for k in 1 2 3 4; do
    ip netns exec "ars-s$k" "$BIN/arsnetd" --socket "$WORK/s$k.sock" --state-dir "$WORK/s$k-state" 2>"$WORK/s$k.log" &
done
ip netns exec ars-c "$BIN/arsnetd" --socket "$WORK/c.sock" --state-dir "$WORK/c-state" 2>"$WORK/c.log" &
sleep 0.5
SOURCES=()
for k in 1 2 3 4; do
    "$BIN/arsnetctl" --socket "$WORK/s$k.sock" serve -i 60 -n 1 -f "$FILE" -p 5000 --bind "192.0.2.$((k * 4 + 2))" >/dev/null
    SOURCES+=(--source "192.0.2.$((k * 4 + 2)):5000")
done
KILLER=
if [ "$KILL" = 1 ]; then
    ( sleep "$(echo "$FULL / 2" | bc -l)"; "$BIN/arsnetctl" --socket "$WORK/s4.sock" stop-server 5000 >/dev/null ) &
    KILLER=$!
fi
t0=$(date +%s.%N)
"$BIN/arsnetctl" --socket "$WORK/c.sock" fetch -o "$WORK/out" "${SOURCES[@]}" --wait -i 60 >/dev/null
t1=$(date +%s.%N)
[ -z "$KILLER" ] || wait "$KILLER"
[ "$(verdict "$WORK/out/payload.bin")" = ok ] || { echo MISMATCH; exit 1; }
secs=$(echo "$t1 - $t0" | bc)
printf 'arsnet: %d MiB over links of %s x %d Mbit/s, kill=%s: %.2f s (ideal %.2f s, %.0f%%)\n' \
    "$SIZE_MIB" "${MULT[*]}" "$R" "$KILL" "$secs" "$IDEAL" "$(echo "100 * $IDEAL / $secs" | bc -l)"

# --- aria2 + nginx -----------------------------------------------------------------------
URLS=()
for k in 1 2 3 4; do
    conf=$WORK/nginx$k.conf
    echo "worker_processes 1; pid $WORK/nginx$k.pid; error_log $WORK/nginx$k.err;
events {} http { access_log off; sendfile on; server { listen 192.0.2.$((k * 4 + 2)):8000; root $WORK/src; } }" > "$conf"
    ip netns exec "ars-s$k" nginx -c "$conf"
    URLS+=("http://192.0.2.$((k * 4 + 2)):8000/payload.bin")
done
KILLER=
if [ "$KILL" = 1 ]; then
    ( sleep "$(echo "$FULL / 2" | bc -l)"; ip netns exec ars-s4 nginx -c "$WORK/nginx4.conf" -s stop ) &
    KILLER=$!
fi
t0=$(date +%s.%N)
ip netns exec ars-c aria2c -q -d "$WORK/aria" ${ARIA2_OPTS:--s 4 -x 1 -k 1M} --file-allocation=none \
    --allow-overwrite=true "${URLS[@]}" || true
t1=$(date +%s.%N)
[ -z "$KILLER" ] || wait "$KILLER"
ok=$(verdict "$WORK/aria/payload.bin")
secs=$(echo "$t1 - $t0" | bc)
printf 'aria2c: %d MiB over links of %s x %d Mbit/s, kill=%s: %.2f s (ideal %.2f s, %.0f%%), result %s\n' \
    "$SIZE_MIB" "${MULT[*]}" "$R" "$KILL" "$secs" "$IDEAL" "$(echo "100 * $IDEAL / $secs" | bc -l)" "$ok"
# --- ArsNet from the nginx mirrors (MIRRORS=1) ----------------------------------------------
if [ "${MIRRORS:-0}" = 1 ]; then
    [ "$KILL" = 1 ] && ip netns exec ars-s4 nginx -c "$WORK/nginx4.conf"
    sleep 0.3
    MSOURCES=(--source "192.0.2.6:5000")
    for url in "${URLS[@]}"; do MSOURCES+=(--source "$url"); done
    KILLER=
    if [ "$KILL" = 1 ]; then
        ( sleep "$(echo "$FULL / 2" | bc -l)"; ip netns exec ars-s4 nginx -c "$WORK/nginx4.conf" -s stop ) &
        KILLER=$!
    fi
    t0=$(date +%s.%N)
    "$BIN/arsnetctl" --socket "$WORK/c.sock" fetch -o "$WORK/out-mirrors" "${MSOURCES[@]}" --wait -i 60 >/dev/null
    t1=$(date +%s.%N)
    [ -z "$KILLER" ] || wait "$KILLER"
    [ "$(verdict "$WORK/out-mirrors/payload.bin")" = ok ] || { echo MISMATCH; exit 1; }
    secs=$(echo "$t1 - $t0" | bc)
    printf 'arsnet (4 nginx mirrors + 1 server on link 1): %d MiB over links of %s x %d Mbit/s, kill=%s: %.2f s (ideal %.2f s, %.0f%%)\n' \
        "$SIZE_MIB" "${MULT[*]}" "$R" "$KILL" "$secs" "$IDEAL" "$(echo "100 * $IDEAL / $secs" | bc -l)"
fi
for k in 1 2 3 4; do ip netns exec "ars-s$k" nginx -c "$WORK/nginx$k.conf" -s stop 2>/dev/null || true; done
