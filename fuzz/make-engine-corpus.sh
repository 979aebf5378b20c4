#!/usr/bin/env bash
# Rewrites the seed corpora of the engine targets (corpus/{vhd,qcow2,changed_list,
# bundle_manifest,nbd_client}/) from real files and real servers:
#   vhd         qemu-img -f vpc (fixed; dynamic, 2 MiB blocks cut at the disk's end) and a
#               differencing VHD written by `tessera export --base --format vhd`;
#   qcow2       qemu-img/qemu-io: v2 and v3, backing file, zero clusters, deflate and zstd
#               compressed clusters, extended L2, persistent dirty bitmaps (qemu-img bitmap);
#   changed_list  the SPEC's examples (no tool writes them but the user's tracker);
#   bundle_manifest  `tessera seed export` of a small repository: bundle.json and, as the
#               target also reads it, the manifest text inside it;
#   http_bodies  have/get digest lists and put record streams taken from that bundle's pack;
#   nbd_client  what qemu-nbd and nbdkit sent in one client session each, recorded by
#               examples/record_nbd.rs through a proxy;
#   nbd_server  what qemu-img and nbdinfo sent to `tessera serve-nbd` (list, info, map,
#               convert, compare), recorded by a Python proxy; each seed twice, for the
#               plain server (first byte 0) and for the one requiring TLS (first byte 1).
# Usage: fuzz/make-engine-corpus.sh [TESSERA_BINARY] (default: builds the CLI with cargo).
# Needs qemu-utils, nbdkit and python3 (scripts/ensure-deps.sh). Not deterministic (ids,
# times); the committed seeds are what one run made.
set -euo pipefail
fuzz="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$fuzz")"
if [ $# -ge 1 ]; then
    tessera="$1"
else
    (cd "$root" && cargo build -q -p tessera-cli)
    tessera="${CARGO_TARGET_DIR:-$root/target}/debug/tessera"
fi
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT
corpus="$fuzz/corpus"
for t in vhd qcow2 changed_list bundle_manifest nbd_client nbd_server http_bodies; do
    rm -rf "${corpus:?}/$t"
    mkdir -p "$corpus/$t"
done
qio() { qemu-io -f "$1" "${@:3}" "$2" >/dev/null; }

# A dynamic VHD's blocks are 2 MiB in the file even when the disk is smaller; keep each
# block's bitmap and data only as far as the disk reaches (what tessera reads; the rest is
# unused) and move the footer after it, so that the seed stays a few KiB.
cut_vhd() {
    python3 - "$1" "$2" <<'PY'
import struct, sys
src, dst = sys.argv[1], sys.argv[2]
b = bytearray(open(src, 'rb').read())
foot = b[-512:]
size = struct.unpack('>Q', foot[48:56])[0]
hdr_at = struct.unpack('>Q', foot[16:24])[0]
hdr = b[hdr_at:hdr_at + 1024]
bat_at = struct.unpack('>Q', hdr[16:24])[0]
entries = struct.unpack('>I', hdr[28:32])[0]
bs = struct.unpack('>I', hdr[32:36])[0]
bitmap = -(-(bs // 512 // 8) // 512) * 512
end = bat_at + entries * 4
for i in range(entries):
    sector = struct.unpack('>I', b[bat_at + 4 * i:bat_at + 4 * i + 4])[0]
    if sector != 0xFFFFFFFF:
        reach = min(bs, size - i * bs)
        end = max(end, sector * 512 + bitmap + -(-reach // 512) * 512)
end = -(-end // 512) * 512
out = b[:end] + bytes(max(0, end - len(b[:end]))) + foot
assert len(out) < 128 * 1024, len(out)
open(dst, 'wb').write(out)
PY
}

# --- vhd ---
qemu-img create -q -f vpc -o subformat=fixed "$work/fixed.vhd" 16K
qio vpc "$work/fixed.vhd" -c "write -P 0x33 1k 2k"
cp "$work/fixed.vhd" "$corpus/vhd/fixed"
qemu-img create -q -f vpc "$work/empty.vhd" 64K
cp "$work/empty.vhd" "$corpus/vhd/dynamic-empty"
qemu-img create -q -f vpc "$work/dyn.vhd" 24K
qio vpc "$work/dyn.vhd" -c "write -P 0x5a 0 4k" -c "write -P 0x11 20k 512"
cut_vhd "$work/dyn.vhd" "$corpus/vhd/dynamic"
qemu-img create -q -f vpc -o force_size=on "$work/exact.vhd" 2060K
qio vpc "$work/exact.vhd" -c "write -P 0x77 2050k 1k"
cut_vhd "$work/exact.vhd" "$corpus/vhd/dynamic-force-size"
# Differencing: two snapshots of a small raw disk, the second exported as a delta.
repo="$work/repo"
"$tessera" --quiet init "$repo" --block-size 65536 >/dev/null
python3 -c "import sys; open(sys.argv[1],'wb').write(bytes([7])*4096 + bytes(61440) + bytes([9])*512)" "$work/a.raw"
"$tessera" --quiet backup "$repo" --series vm "d=$work/a.raw" >/dev/null
python3 - "$work/a.raw" <<'PY'
import sys
with open(sys.argv[1], 'r+b') as f:
    f.seek(0); f.write(bytes([8]) * 1024)
PY
"$tessera" --quiet backup "$repo" --series vm "d=$work/a.raw" >/dev/null
ids=($("$tessera" --json list "$repo" | python3 -c "import json,sys; print(' '.join(s['id'] for s in json.load(sys.stdin)['snapshots']))"))
"$tessera" --quiet export "$repo" "${ids[1]}" "$work/delta.vhd" --base "${ids[0]}" --format vhd >/dev/null
cut_vhd "$work/delta.vhd" "$corpus/vhd/differencing"

# --- qcow2 (4 KiB clusters keep the images small) ---
q() { qemu-img create -q -f qcow2 -o "cluster_size=4096,$1" "$work/$2" "${@:3}"; }
q compat=0.10 v2.qcow2 256K
qio qcow2 "$work/v2.qcow2" -c "write -P 0x21 0 8k" -c "write -P 0x22 100k 4k"
q compat=1.1 base.qcow2 256K
qio qcow2 "$work/base.qcow2" -c "write -P 0x31 0 64k" -c "write -z 128k 8k"
q compat=1.1 top.qcow2 -b base.qcow2 -F qcow2
qemu-img bitmap --add "$work/top.qcow2" b0
qemu-img bitmap --add "$work/top.qcow2" b1 -g 65536
qio qcow2 "$work/top.qcow2" -c "write -P 0x41 4k 4k" -c "write -z 40k 4k" -c "write -P 0x42 200k 512"
q compat=1.1,extended_l2=on,cluster_size=16384 ext.qcow2 256K
qio qcow2 "$work/ext.qcow2" -c "write -P 0x51 0 512" -c "write -P 0x52 20k 2k" -c "write -z 64k 1k"
qemu-img convert -q -c -O qcow2 -o cluster_size=4096 -f qcow2 "$work/base.qcow2" "$work/deflate.qcow2"
qemu-img convert -q -c -O qcow2 -o cluster_size=4096,compression_type=zstd -f qcow2 "$work/base.qcow2" "$work/zstd.qcow2"
for f in v2 base top ext deflate zstd; do
    cp "$work/$f.qcow2" "$corpus/qcow2/$f"
done

# --- changed_list ---
cat >"$corpus/changed_list/extents" <<'TXT'
tessera-changed-blocks v1
size 10737418240            # the disk's size in bytes
base-state cbt:52-a3-17/41
state cbt:52-a3-17/42
extent 0 65536
extent 1048576 4096
TXT
cat >"$corpus/changed_list/bitmap" <<'TXT'
tessera-changed-blocks v1
size 1048576
base-state rct:7
state rct:8
granularity 65536
bitmap 0f00
bitmap 81
extent 100 10
TXT
cat >"$corpus/changed_list/allocation-map" <<'TXT'
tessera-changed-blocks v1
size 1048576
base-state *
state cbt:1
granularity 512
bitmap ffff0000000000000000000000000001
TXT

# --- bundle_manifest ---
"$tessera" --quiet seed export "$repo" "$work/bundle" >/dev/null
cp "$work/bundle/bundle.json" "$corpus/bundle_manifest/bundle.json"
python3 -c "import json,sys; sys.stdout.write(json.load(open(sys.argv[1]))['manifest'])" \
    "$work/bundle/bundle.json" >"$corpus/bundle_manifest/manifest"

# --- http_bodies: a put body is pack records back to back (SPEC §4), a have/get body
# digests; both taken from the bundle's pack, whose records are what a push sends ---
mkdir -p "$corpus/http_bodies"
python3 - "$work/bundle" "$corpus/http_bodies" <<'PY'
import glob, os, struct, sys
bundle, out = sys.argv[1], sys.argv[2]
records = {1: [], 2: []}
for pack in sorted(glob.glob(os.path.join(bundle, '*.pack'))):
    b = open(pack, 'rb').read()
    at = 16
    while b[at:at + 4] == b'TREC':
        stored = struct.unpack('<I', b[at + 44:at + 48])[0]
        records[b[at + 4]].append(b[at:at + 56 + stored])
        at += 56 + stored
digests = b''.join(r[8:40] for r in records[1] + records[2])
for name, which, body in [('have', 0, digests), ('get', 1, digests[:32 * 4]),
                          ('put-chunks', 2, b''.join(records[1][:3])),
                          ('put-pages', 3, b''.join(records[2][:2]))]:
    assert body, name
    open(os.path.join(out, name), 'wb').write(bytes([which]) + body)
PY

# --- nbd_client ---
record="$(cd "$fuzz" && cargo build -q --example record_nbd && echo "${CARGO_TARGET_DIR:-$fuzz/target}/debug/examples/record_nbd")"
serve() { # SOCKET COMMAND...: starts a server on SOCKET and waits for it
    "${@:2}" &
    pids+=($!)
    for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
    echo "server on $1 did not start" >&2
    exit 1
}
qemu-img create -q -f qcow2 -o cluster_size=4096 "$work/nbd.qcow2" 1M
qemu-img bitmap --add "$work/nbd.qcow2" b0
qio qcow2 "$work/nbd.qcow2" -c "write -P 0x61 64k 8k" -c "write -P 0x62 512k 4k"
serve "$work/q1.sock" qemu-nbd -r -f qcow2 -x disk -B b0 -k "$work/q1.sock" "$work/nbd.qcow2"
"$record" "$work/q1.sock" 1 "$corpus/nbd_client/qemu-nbd-bitmap"
serve "$work/q2.sock" qemu-nbd -r -f qcow2 -x disk -k "$work/q2.sock" "$work/nbd.qcow2"
"$record" "$work/q2.sock" 0 "$corpus/nbd_client/qemu-nbd"
serve "$work/k1.sock" nbdkit -f -U "$work/k1.sock" -e disk data "1 2 3 @65536 4 @^131072 5" size=1M
"$record" "$work/k1.sock" 0 "$corpus/nbd_client/nbdkit-data"
serve "$work/k2.sock" nbdkit -f -U "$work/k2.sock" -e disk pattern 96K
"$record" "$work/k2.sock" 0 "$corpus/nbd_client/nbdkit-pattern"

# --- nbd_server: real clients' conversations with `tessera serve-nbd` ---
# A snapshot of the fuzz target's two exports (same names and bytes as
# fuzz/src/nbd_server.rs, so the recorded requests name and read what the fuzzed server
# has) served over a Unix socket; a proxy on another socket passes each connection
# through and keeps what the client sent, one file per connection.
python3 - "$work/alpha.raw" "$work/beta.raw" <<'PY'
import sys
a = bytearray(256 * 1024)
for i in range(64 * 1024):
    a[i] = i % 251 + 1
a[128 * 1024 + 17] = 0x5a
b = bytearray(40000)
for i in range(8192, 40000):
    b[i] = i % 13
open(sys.argv[1], 'wb').write(a)
open(sys.argv[2], 'wb').write(b)
PY
"$tessera" --quiet backup "$repo" --series two "fuzz-export-alpha=$work/alpha.raw" \
    "fuzz-export-beta=$work/beta.raw" >/dev/null
serve "$work/t.sock" "$tessera" --quiet serve-nbd "$repo" latest --socket "$work/t.sock"
mkdir -p "$work/captured"
python3 - "$work/p.sock" "$work/t.sock" "$work/captured" <<'PY' &
import os, socket, sys, threading
listen_at, server_at, out = sys.argv[1:4]
n = 0
def pump(src, dst, log):
    while True:
        try:
            b = src.recv(65536)
        except OSError:
            b = b''
        if not b:
            break
        if log is not None:
            log.append(b)
        try:
            dst.sendall(b)
        except OSError:
            break
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(client, i):
    server = socket.socket(socket.AF_UNIX)
    server.connect(server_at)
    log = []
    down = threading.Thread(target=pump, args=(server, client, None))
    down.start()
    pump(client, server, log)
    down.join()
    with open(os.path.join(out, '%03d' % i), 'wb') as f:
        f.write(b''.join(log))
s = socket.socket(socket.AF_UNIX)
s.bind(listen_at)
s.listen(8)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c, n)).start()
    n += 1
PY
pids+=($!)
for _ in $(seq 100); do [ -S "$work/p.sock" ] && break; sleep 0.1; done
uri="nbd+unix:///fuzz-export-alpha?socket=$work/p.sock"
capture() { # NAME COMMAND...: runs a client through the proxy, keeps what it sent as NAME
    local before
    before="$(ls "$work/captured" | wc -l)"
    "${@:2}" >/dev/null
    for _ in $(seq 50); do
        [ "$(ls "$work/captured" | wc -l)" -gt "$before" ] && break
        sleep 0.1
    done
    local file="$work/captured/$(ls "$work/captured" | sort | tail -1)"
    { printf '\000'; cat "$file"; } >"$corpus/nbd_server/$1"
    { printf '\001'; cat "$file"; } >"$corpus/nbd_server/$1-tls"
}
capture nbdinfo-list nbdinfo --list "nbd+unix://?socket=$work/p.sock"
capture nbdinfo nbdinfo "$uri"
capture nbdinfo-map nbdinfo --map "$uri"
capture qemu-img-info qemu-img info "$uri"
capture qemu-img-map qemu-img map --output=json "$uri"
capture qemu-img-convert qemu-img convert -f raw -O raw "$uri" "$work/e.copy"
cmp "$work/alpha.raw" "$work/e.copy"
capture qemu-img-compare qemu-img compare -f raw -F raw "$uri" "$work/alpha.raw"
ls -l "$corpus"/{vhd,qcow2,changed_list,bundle_manifest,nbd_client,nbd_server,http_bodies}
