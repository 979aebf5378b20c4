#!/usr/bin/env bash
# Rewrites the seed corpus of the `explore` target (corpus/explore/) with the real tools:
# mkfs.ext4 -d (ext2 with block maps; ext4 with 1 KiB blocks; ext4 with inline_data),
# mkfs.vfat + mcopy (FAT12), sfdisk (an MBR with a primary ext2 and a FAT12 logical
# partition in an extended one) and sgdisk (a GPT with named ext4 and FAT12 partitions).
# Small images (128 KiB filesystems) so that libFuzzer's mutations reach the structures.
# Needs e2fsprogs, dosfstools, mtools, fdisk and gdisk (scripts/ensure-deps.sh).
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
mkdir -p "$out"
cp ext2.img ext4-inline.img fat12.img mbr-ext2-fat.img gpt-ext4-fat.img "$out/"
