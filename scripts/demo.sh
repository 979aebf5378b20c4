#!/usr/bin/env bash
# The main job end to end on an embedded default: generate a sample disk, back it up, change
# it, take a delta backup, restore both snapshots, and verify them byte for byte and with
# `tessera verify`, in an encrypted repository; then the same with a qcow2 overlay made by qemu-img as a delta source
# (only its changed clusters are read); then an off-site copy sharing its keys, seeded from a
# bundle and brought up to date with sync; then files read out of a snapshot of an ext4 disk
# without restoring it. Installs what it needs first. DEMO_SIZE_MIB sets the disk size (default 256).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/ensure-deps.sh
cargo build -p tessera-cli
BIN="${CARGO_TARGET_DIR:-target}/debug/tessera"
SIZE_MIB="${DEMO_SIZE_MIB:-256}"
WORK="$(mktemp -d /var/tmp/tessera-demo.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "generate a ${SIZE_MIB} MiB sample disk: a quarter holes, compressible text, random data"
DISK="$WORK/disk0.img"
q=$((SIZE_MIB / 4))
truncate -s "${SIZE_MIB}M" "$DISK"
{ yes "tessera demo: a line of very compressible operating-system-like text 0123456789" || true; } \
    | head -c "$((q * 2))M" | dd of="$DISK" bs=1M seek="$q" conv=notrunc status=none
head -c "${q}M" /dev/urandom | dd of="$DISK" bs=1M seek="$((q * 3))" conv=notrunc status=none
cp --sparse=always "$DISK" "$WORK/disk0.gen1"

step "create an encrypted repository (the default) and take a full backup"
REPO="$WORK/repo"
# A real user types the passphrase at the prompt, or gives --passphrase-file/--password-command.
export TESSERA_PASSPHRASE="demo passphrase"
"$BIN" init "$REPO" --recovery-key-file "$WORK/recovery-key"
"$BIN" backup "$REPO" --series demo-vm "disk0=$DISK" --tag generation=1
if grep -rqa "tessera demo: a line" "$REPO"; then
    echo "the repository holds the disk's text in clear" >&2
    exit 1
fi
echo "no stored file holds the disk's text: chunks are sealed with AES-256-GCM"
if TESSERA_PASSPHRASE=wrong "$BIN" list "$REPO" 2>/dev/null; then
    echo "a wrong passphrase opened the repository" >&2
    exit 1
else
    code=$?
    [ "$code" -eq 6 ] || { echo "a wrong passphrase exited $code, not 6" >&2; exit 1; }
fi
echo "a wrong passphrase is refused (exit 6)"

step "change 2% of the disk with random 64 KiB writes, then take a delta backup"
blocks=$((SIZE_MIB * 16))
for i in $(seq 1 $((blocks / 50))); do
    { head -c 65536 /dev/urandom || true; } | dd of="$DISK" bs=4096 seek=$(( (RANDOM * 32768 + RANDOM) % (blocks * 16 - 16) )) conv=notrunc status=none
done
cp --sparse=always "$DISK" "$WORK/disk0.gen2"
"$BIN" backup "$REPO" --series demo-vm "disk0=$DISK" --tag generation=2

step "list, show and stats"
"$BIN" list "$REPO"
"$BIN" stats "$REPO"

step "restore both snapshots and compare them byte for byte with the disk at each point"
first=$("$BIN" list "$REPO" --json | grep '"id"' | head -1 | cut -d'"' -f4)
"$BIN" restore "$REPO" "$first" "$WORK/restored.gen1"
"$BIN" restore "$REPO" latest "$WORK/restored.gen2"
cmp "$WORK/restored.gen1" "$WORK/disk0.gen1"
cmp "$WORK/restored.gen2" "$WORK/disk0.gen2"
echo "both restores are byte-identical"

step "a qcow2 overlay as a delta source: only the overlay's clusters are read"
qemu-img convert -f raw -O qcow2 "$WORK/disk0.gen1" "$WORK/base.qcow2"
"$BIN" backup "$REPO" --series demo-qcow2 "disk0=$WORK/base.qcow2"
qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$WORK/overlay.qcow2"
writes=()
for i in $(seq 1 $((blocks / 50))); do
    writes+=(-c "write -P $((i % 250 + 1)) $(( (RANDOM * 32768 + RANDOM) % blocks * 65536 )) 64k")
done
qemu-io -f qcow2 "${writes[@]}" "$WORK/overlay.qcow2" >/dev/null
"$BIN" backup "$REPO" --series demo-qcow2 "disk0=$WORK/overlay.qcow2" --reference latest
"$BIN" restore "$REPO" latest@demo-qcow2 "$WORK/restored.qcow2.raw"
qemu-img convert -f qcow2 -O raw "$WORK/overlay.qcow2" "$WORK/overlay.raw"
cmp "$WORK/restored.qcow2.raw" "$WORK/overlay.raw"
echo "the delta snapshot restores byte-identical to qemu-img's reading of the overlay"

step "seed then ship, encrypted: an off-site copy sharing the keys, from a bundle, then sync"
"$BIN" seed export "$REPO" "$WORK/usb-seed" --series demo-vm --snapshot "$first"
if grep -rqa "tessera demo: a line" "$WORK/usb-seed"; then
    echo "the seed bundle holds the disk's text in clear" >&2
    exit 1
fi
# Off-site, from the bundle alone: the copy's own passphrase and recovery key, the same keys.
OFFSITE_PASS_FILE="$WORK/offsite-pass"
echo "off-site passphrase" > "$OFFSITE_PASS_FILE"
"$BIN" init "$WORK/offsite" --keys-from "$WORK/usb-seed" \
    --new-passphrase-file "$OFFSITE_PASS_FILE" --recovery-key-file "$WORK/offsite-recovery-key"
TESSERA_PASSPHRASE="off-site passphrase" "$BIN" seed import "$WORK/usb-seed" "$WORK/offsite"
"$BIN" sync "$REPO" "$WORK/offsite"             # later: only what the bundle did not carry
TESSERA_PASSPHRASE="off-site passphrase" "$BIN" restore "$WORK/offsite" latest@demo-vm "$WORK/offsite.gen2"
cmp "$WORK/offsite.gen2" "$WORK/disk0.gen2"
echo "the off-site copy restores byte-identical, opened with its own passphrase"

step "files from a snapshot without restoring the disk: an ext4 disk made by mkfs.ext4 -d"
mkdir -p "$WORK/vm2-root/etc/app" "$WORK/vm2-root/var/log"
echo "vm2" > "$WORK/vm2-root/etc/hostname"
head -c 3M /dev/urandom > "$WORK/vm2-root/var/log/big.log"
ln -s ../var/log/big.log "$WORK/vm2-root/etc/app/log"
truncate -s 64M "$WORK/vm2.img"
mkfs.ext4 -q -F -d "$WORK/vm2-root" "$WORK/vm2.img"
"$BIN" backup "$REPO" --series vm2 "root=$WORK/vm2.img"
"$BIN" files ls -l "$REPO" latest@vm2:/etc
"$BIN" files get "$REPO" latest@vm2:/ "$WORK/vm2-files"
diff -r --no-dereference "$WORK/vm2-root" "$WORK/vm2-files" -x lost+found
echo "the tree restored from the snapshot equals the source, byte for byte"

step "a job file: backup, retention, verify and an off-site sync as one run, with its history"
mkdir -p "$WORK/jobs"
cat > "$WORK/jobs/vm2.toml" <<TOML
[repository]
location = "$REPO"              # the passphrase comes from TESSERA_PASSPHRASE here

[backup]
series = "vm2"
[[backup.disk]]
name = "root"
source = "$WORK/vm2.img"

[retention]
keep-last = 2

[verify]
full-every = "7d"

[[sync]]
to = "$WORK/offsite"
TOML
"$BIN" job check "$WORK/jobs/vm2.toml"
"$BIN" job run "$WORK/jobs/vm2.toml" --state-dir "$WORK/state"
echo "more data" >> "$WORK/vm2-root/etc/hostname"
mkfs.ext4 -q -F -d "$WORK/vm2-root" "$WORK/vm2.img"
"$BIN" job run "$WORK/jobs/vm2.toml" --state-dir "$WORK/state"
"$BIN" job history vm2 --state-dir "$WORK/state"
TESSERA_PASSPHRASE="off-site passphrase" "$BIN" restore "$WORK/offsite" latest@vm2:root "$WORK/vm2.offsite"
cmp "$WORK/vm2.offsite" "$WORK/vm2.img"
echo "the job's newest snapshot reached the off-site copy and restores byte-identical"

step "verify every stored byte and every reference count"
"$BIN" verify "$REPO"
TESSERA_PASSPHRASE="off-site passphrase" "$BIN" verify "$WORK/offsite"
echo
echo "demo OK"
