#!/usr/bin/env bash
# Rewrites the seed corpus of the `explore` target (corpus/explore/) with the real tools:
# mkfs.ext4 -d (ext2 with block maps; ext4 with 1 KiB blocks; ext4 with inline_data),
# mkfs.vfat + mcopy (FAT12), sfdisk (an MBR with a primary ext2 and a FAT12 logical
# partition in an extended one) and sgdisk (a GPT with named ext4 and FAT12 partitions).
# Small images (128 KiB filesystems) so that libFuzzer's mutations reach the structures.
# lvm-ext2.img: an LVM2 PV (pvcreate/vgcreate on a loop device, the LV laid out with
# vgcfgrestore: device-mapper is not needed) whose LV `fuzzvg/root` is two segments in
# reverse order holding the ext2 image, cut just past the LV's last extent.
# ntfs.img: mkfs.ntfs on 1100 KiB (its minimum is about 1 MiB) with 512-byte clusters, the
# tree written through an ntfs-3g FUSE mount (ntfs-3g's symlinks are reparse points; a
# resident, a non-resident and a sparse file; a hard link; a non-ASCII name).
# Needs e2fsprogs, dosfstools, mtools, fdisk, gdisk, lvm2 and ntfs-3g (scripts/ensure-deps.sh),
# root, FUSE and a free loop device.
set -euo pipefail
out="$(cd "$(dirname "$0")" && pwd)/corpus/explore"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir -p src/d/e
echo hello > src/a.txt
ln -s a.txt src/link
ln src/a.txt src/hard
head -c 5000 /dev/urandom > src/d/e/blob
mkfs.ext4 -q -F -t ext2 -b 1024 -N 16 -O ^resize_inode -d src ext2.img 128K
mkfs.ext4 -q -F -b 1024 -N 16 -O ^has_journal,^resize_inode -d src ext4-1k.img 128K
mkfs.ext4 -q -F -b 1024 -N 16 -I 256 -O ^has_journal,^resize_inode,inline_data -d src ext4-inline.img 128K
truncate -s 100K fat12.img
mkfs.vfat -F 12 fat12.img >/dev/null
mcopy -s -i fat12.img src/a.txt src/d ::/
truncate -s 300K mbr-ext2-fat.img
printf 'label: dos\nstart=40, size=256, type=83\nstart=300, size=300, type=5\nstart=302, size=200, type=c\n' \
    | sfdisk -q --no-reread mbr-ext2-fat.img
dd if=ext2.img of=mbr-ext2-fat.img bs=512 seek=40 conv=notrunc status=none
dd if=fat12.img of=mbr-ext2-fat.img bs=512 seek=302 conv=notrunc status=none
truncate -s 400K gpt-ext4-fat.img
sgdisk -a 1 -n 1:40:295 -c 1:root -n 2:296:495 -c 2:esp gpt-ext4-fat.img >/dev/null
dd if=ext4-1k.img of=gpt-ext4-fat.img bs=512 seek=40 conv=notrunc status=none
dd if=fat12.img of=gpt-ext4-fat.img bs=512 seek=296 conv=notrunc status=none
export LVM_SUPPRESS_FD_WARNINGS=1
truncate -s 3M lvm-ext2.img
dev="$(losetup -f --show lvm-ext2.img)"
pvcreate -q -y --metadatasize 64k --dataalignment 64k "$dev"
vgcreate -q -s 64k fuzzvg "$dev"
vgcfgbackup -q -f vg.txt fuzzvg
python3 - <<'PY'
text = open("vg.txt").read()
segment = lambda n, start, pe: (f'\t\t\tsegment{n} {{ start_extent = {start} extent_count = 8 type = "striped" '
                                f'stripe_count = 1 stripes = [ "pv0", {pe} ] }}\n')
lv = ('\tlogical_volumes {\n\t\troot {\n\t\t\tid = "abcdef-ghij-klmn-opqr-stuv-wxyz-000001"\n'
      '\t\t\tstatus = ["READ", "WRITE", "VISIBLE"]\n\t\t\tsegment_count = 2\n'
      + segment(1, 0, 16) + segment(2, 8, 0) + '\t\t}\n\t}\n')
end = text.rindex("}")
open("vg-lv.txt", "w").write(text[:end] + lv + text[end:])
PY
vgcfgrestore -q -f vg-lv.txt fuzzvg 2>/dev/null || true
vgchange -q -an fuzzvg >/dev/null 2>&1 || true
losetup -d "$dev"
# Extents of 64 KiB from byte 128 KiB: LV bytes 0..512K at PE 16, 512K..1M at PE 0.
truncate -s 1M ext2-1m.img
mkfs.ext4 -q -F -t ext2 -b 1024 -N 16 -O ^resize_inode -d src ext2-1m.img
dd if=ext2-1m.img of=lvm-ext2.img bs=64K count=8 seek=18 conv=notrunc status=none
dd if=ext2-1m.img of=lvm-ext2.img bs=64K skip=8 count=8 seek=2 conv=notrunc status=none
truncate -s 1664K lvm-ext2.img
truncate -s 1100K ntfs.img
mkfs.ntfs -F -Q -q -c 512 ntfs.img >/dev/null 2>&1
mkdir -p mnt
ntfs-3g ntfs.img mnt
trap 'umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
cp -r src/d src/a.txt mnt/
ln -s a.txt mnt/link
ln mnt/a.txt mnt/hard
echo été > "mnt/d/été.txt"
python3 -c "f = open('mnt/sparse', 'wb'); f.write(b'x' * 10); f.seek(40000); f.write(b'y')"
umount mnt
mkdir -p "$out"
cp ext2.img ext4-inline.img fat12.img mbr-ext2-fat.img gpt-ext4-fat.img lvm-ext2.img ntfs.img "$out/"
