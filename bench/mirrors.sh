#!/usr/bin/env bash
# HTTP mirrors only: ArsNet and aria2 fetch the same file from the same 4 nginx mirrors, in the
# same run, over the same shaped links (as bench/netns.sh: 4 server namespaces joined to a
# client namespace by veth pairs whose server side is shaped with tc htb to R, 2R, 4R, 8R
# Mbit/s). No ArsNet server anywhere: one arsnetd on the client, pinned with --sha256. Usage:
#   bench/mirrors.sh [SIZE_MIB=256] [R_MBIT=40] [SCENARIO...]
# Scenarios (default: all, in this order; each runs ArsNet, then aria2, into fresh dirs):
#   uneven   all 4 mirrors healthy
#   killed   the fastest mirror's nginx (link 4) is stopped half-way
#   stalled  half-way, the fastest mirror's nginx worker is SIGSTOPped (connections stay open)
#   slowed   half-way, link 4's htb class drops from 8R to R Mbit/s
#   bad      mirror BAD_MIRROR (default 4) serves a copy with one byte flipped per MiB
# "Half-way" = half the ideal healthy time (FULL / 2) after the start, as netns.sh's KILL=1.
# Environment: ARSNET_BIN (prebuilt binaries, see lib.sh), BENCH_DIR, BAD_MIRROR,
# CONNS (ArsNet --connections-per-source), CAP (seconds before a run is given up, default 300),
# ARIA2_PIN=1 (give aria2 --checksum in every scenario, not only "bad"), CONFIG (an arsnetd
# config file for the client daemon, to try its [download] options).
# All addresses are on veth links between namespaces this script creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${1:-256}
R=${2:-40}
shift $(($# < 2 ? $# : 2))
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(uneven killed stalled slowed bad)
for s in "${SCENARIOS[@]}"; do
    case $s in uneven | killed | stalled | slowed | bad) ;; *) echo "unknown scenario: $s" >&2; exit 2 ;; esac
done
WORK=${BENCH_DIR:-/tmp/arsnet-mirrors}
BAD_MIRROR=${BAD_MIRROR:-4}
CAP=${CAP:-300}
MULT=(1 2 4 8)
NS=arsm   # namespaces arsm-c, arsm-s1..4 (distinct from netns.sh's)
source bench/lib.sh

# --- namespaces and shaped links (as netns.sh) ---------------------------------------------
cleanup() {
    for k in 1 2 3 4; do
        # SIGCONT first: a stopped nginx worker would not act on SIGTERM.
        ip netns pids "$NS-s$k" 2>/dev/null | xargs -r kill -CONT 2>/dev/null || true
        ip netns pids "$NS-s$k" 2>/dev/null | xargs -r kill 2>/dev/null || true
    done
    ip netns pids "$NS-c" 2>/dev/null | xargs -r kill 2>/dev/null || true
    sleep 0.3
    for k in 1 2 3 4; do ip netns del "$NS-s$k" 2>/dev/null || true; done
    ip netns del "$NS-c" 2>/dev/null || true
}
trap cleanup EXIT
cleanup

ip netns add "$NS-c"
ip -n "$NS-c" link set lo up
for k in 1 2 3 4; do
    ns=$NS-s$k
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "c$k" netns "$NS-c" type veth peer name "s$k" netns "$ns"
    ip -n "$NS-c" addr add "192.0.2.$((k * 4 + 1))/30" dev "c$k"   # TEST-NET-1, our links only
    ip -n "$ns" addr add "192.0.2.$((k * 4 + 2))/30" dev "s$k"
    ip -n "$NS-c" link set "c$k" up
    ip -n "$ns" link set "s$k" up
    ip netns exec "$ns" tc qdisc add dev "s$k" root handle 1: htb default 10 r2q 1000
    ip netns exec "$ns" tc class add dev "s$k" parent 1: classid 1:10 htb \
        rate "$((R * MULT[k - 1]))mbit" ceil "$((R * MULT[k - 1]))mbit"
done
set_rate() { # LINK MBIT
    ip netns exec "$NS-s$1" tc class change dev "s$1" parent 1: classid 1:10 htb rate "$2mbit" ceil "$2mbit"
}

# Ideal times (s): the file's megabits over the links' nominal sum (15R), and for the
# half-way events half the file at 15R plus the other half at what is left.
MBITS=$(echo "$SIZE_MIB * 8 * 1.048576" | bc -l)
FULL=$(echo "$MBITS / ($R * 15)" | bc -l)
HALF=$(echo "$FULL / 2" | bc -l)
ideal() {
    case $1 in
        uneven) echo "$FULL" ;;
        killed | stalled) echo "$HALF + ($MBITS / 2) / ($R * 7)" | bc -l ;;   # link 4 gone
        slowed) echo "$HALF + ($MBITS / 2) / ($R * 8)" | bc -l ;;             # link 4 at R
        bad) echo "$MBITS / ($R * (15 - ${MULT[BAD_MIRROR - 1]}))" | bc -l ;; # bad link useless
    esac
}

# --- nginx mirrors --------------------------------------------------------------------------
# Mirror k serves ROOT/payload.bin on 192.0.2.(4k+2):8000; one worker, as netns.sh.
start_nginx() { # K ROOT
    local conf=$WORK/nginx$1.conf
    echo "worker_processes 1; pid $WORK/nginx$1.pid; error_log $WORK/nginx$1.err;
events {} http { access_log off; sendfile on; server { listen 192.0.2.$(($1 * 4 + 2)):8000; root $2; } }" >"$conf"
    ip netns exec "$NS-s$1" nginx -c "$conf"
}
stop_nginx() { # K
    [ -e "$WORK/nginx$1.pid" ] || return 0
    ip netns exec "$NS-s$1" nginx -c "$WORK/nginx$1.conf" -s stop 2>/dev/null || true
    while [ -e "$WORK/nginx$1.pid" ]; do sleep 0.05; done
}
nginx_workers() { pgrep -P "$(cat "$WORK/nginx$1.pid")"; } # K
for k in 1 2 3 4; do start_nginx "$k" "$WORK/src"; done
URLS=()
for k in 1 2 3 4; do URLS+=("http://192.0.2.$((k * 4 + 2)):8000/payload.bin"); done

# The bad mirror's copy: one byte flipped (XOR 0xff) per MiB, at a random offset in each MiB.
make_bad_copy() {
    mkdir -p "$WORK/bad"
    python3 - "$FILE" "$WORK/bad/payload.bin" <<'EOF'
import random, sys
MIB = 1 << 20
data = bytearray(open(sys.argv[1], "rb").read())
rng = random.Random(1)
for base in range(0, len(data), MIB):
    i = base + rng.randrange(min(MIB, len(data) - base))
    data[i] ^= 0xFF
open(sys.argv[2], "wb").write(data)
EOF
}

# --- the half-way event and its undoing ------------------------------------------------------
EVENT=
start_event() { # SCENARIO
    EVENT=
    case $1 in
        killed) ( sleep "$HALF"; stop_nginx 4 ) & EVENT=$! ;;
        stalled) ( sleep "$HALF"; kill -STOP $(nginx_workers 4) ) & EVENT=$! ;;
        slowed) ( sleep "$HALF"; set_rate 4 "$R" ) & EVENT=$! ;;
    esac
}
end_event() { # SCENARIO: wait for the event, then restore the healthy state
    [ -z "$EVENT" ] || wait "$EVENT" || true
    case $1 in
        killed) start_nginx 4 "$WORK/src" ;;
        stalled) kill -CONT $(nginx_workers 4) ;;
        slowed) set_rate 4 "$((R * 8))" ;;
    esac
}

# --- runs -------------------------------------------------------------------------------------
ip netns exec "$NS-c" "$BIN/arsnetd" --socket "$WORK/c.sock" --state-dir "$WORK/c-state" \
    ${CONFIG:+--config "$CONFIG"} 2>"$WORK/c.log" &
for _ in $(seq 50); do [ -S "$WORK/c.sock" ] && break; sleep 0.1; done
RESULTS=$WORK/results.txt
: >"$RESULTS"
pct() { echo "100 * $1 / $2" | bc -l; } # IDEAL SECS

run_arsnet() { # SCENARIO
    local s=$1 out=$WORK/$1-arsnet rc=0 t0 t1 secs ok line0 job
    local sources=()
    for u in "${URLS[@]}"; do sources+=(--source "$u"); done
    line0=$(wc -l <"$WORK/c.log")
    start_event "$s"
    t0=$(date +%s.%N)
    "$BIN/arsnetctl" --socket "$WORK/c.sock" fetch -o "$out" "${sources[@]}" --sha256 "$SUM" \
        ${CONNS:+--connections-per-source "$CONNS"} --wait -i 60 --timeout "${CAP}s" \
        >"$out.stdout" 2>"$out.stderr" || rc=$?
    t1=$(date +%s.%N)
    end_event "$s"
    job=$(head -1 "$out.stdout" | grep -oE '^[0-9]+$' || true)   # fetch prints the job id first
    if [ "$rc" = 7 ] && [ -n "$job" ]; then
        "$BIN/arsnetctl" --socket "$WORK/c.sock" cancel "$job" >/dev/null 2>&1 || true
    fi
    [ -z "$job" ] || "$BIN/arsnetctl" --socket "$WORK/c.sock" status "$job" >"$out.status" 2>&1 || true
    sleep 0.2
    tail -n +"$((line0 + 1))" "$WORK/c.log" >"$out.daemon.log"
    ok=$(verdict "$out/payload.bin")
    secs=$(echo "$t1 - $t0" | bc)
    printf '%-8s arsnet: %6.2f s (ideal %5.2f s, %3.0f%%), exit %s, file %s\n' "$s" "$secs" \
        "$(ideal "$s")" "$(pct "$(ideal "$s")" "$secs")" "$rc" "$ok" | tee -a "$RESULTS"
    if [ "$rc" != 0 ]; then sed 's/^/         | /' "$out.stderr" | tail -5; fi
}

run_aria2() { # SCENARIO
    local s=$1 out=$WORK/$1-aria2 rc=0 t0 t1 secs ok pin=()
    if [ "$s" = bad ] || [ "${ARIA2_PIN:-0}" = 1 ]; then pin=(--checksum="sha-256=$SUM"); fi
    start_event "$s"
    t0=$(date +%s.%N)
    ip netns exec "$NS-c" timeout "$CAP" aria2c -q -d "$out" -s 4 -x 4 -j 1 --min-split-size=1M -k 1M \
        --file-allocation=none --allow-overwrite=true "${pin[@]}" \
        --log="$out.log" --log-level=notice "${URLS[@]}" || rc=$?
    t1=$(date +%s.%N)
    end_event "$s"
    ok=$(verdict "$out/payload.bin")
    secs=$(echo "$t1 - $t0" | bc)
    printf '%-8s aria2c: %6.2f s (ideal %5.2f s, %3.0f%%), exit %s, file %s\n' "$s" "$secs" \
        "$(ideal "$s")" "$(pct "$(ideal "$s")" "$secs")" "$rc" "$ok" | tee -a "$RESULTS"
    if [ "$rc" != 0 ]; then grep -iE 'error|checksum|fail' "$out.log" | sed 's/^/         | /' | tail -5 || true; fi
}

echo "$SIZE_MIB MiB, links ${MULT[*]} x $R Mbit/s (sum $((R * 15)) Mbit/s), mirrors only;" \
    "bad mirror (for 'bad'): $BAD_MIRROR; logs in $WORK"
for s in "${SCENARIOS[@]}"; do
    if [ "$s" = bad ]; then
        make_bad_copy
        stop_nginx "$BAD_MIRROR"
        start_nginx "$BAD_MIRROR" "$WORK/bad"
    fi
    run_arsnet "$s"
    run_aria2 "$s"
    if [ "$s" = bad ]; then
        stop_nginx "$BAD_MIRROR"
        start_nginx "$BAD_MIRROR" "$WORK/src"
    fi
done
echo "--- summary ($SIZE_MIB MiB, R=$R) ---"
cat "$RESULTS"
for k in 1 2 3 4; do stop_nginx "$k"; done
