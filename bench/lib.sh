# Shared by the bench scripts (source it after setting SIZE_MIB and WORK): installs the
# comparison tools, builds the release binaries (or, with ARSNET_BIN=DIR, takes prebuilt ones
# from DIR), writes a random test file, and helpers.

if ! command -v aria2c >/dev/null || ! command -v nginx >/dev/null || ! command -v tc >/dev/null; then
    apt-get update -qq && apt-get install -y -qq aria2 nginx-light iproute2 >/dev/null
fi
if [ -n "${ARSNET_BIN:-}" ]; then
    BIN=$ARSNET_BIN
else
    cargo build --release --locked -q -p arsnetd -p arsnetctl
    BIN=$PWD/target/release
fi

rm -rf "$WORK" && mkdir -p "$WORK/src"
FILE=$WORK/src/payload.bin
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > "$FILE"

# Checksum of a file (to check every download against the source).
hash() { sha256sum "$1" | cut -d' ' -f1; }
SUM=$(hash "$FILE")

# "ok" when PATH exists and matches the source, else "FAILED".
verdict() { [ -f "$1" ] && [ "$(hash "$1")" = "$SUM" ] && echo ok || echo FAILED; }

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
