#!/usr/bin/env bash
# Installs the system packages tessera's build and tests need, if they are missing:
# libclang-dev (bindgen for the rocksdb crate), qemu-utils (qemu-img, qemu-nbd) and libnbd-bin
# (nbdinfo, nbdcopy), the real NBD clients the tests use; nbdkit, a second NBD server;
# libssl-dev and pkg-config (the system OpenSSL that `tessera serve`/`sync` use for TLS) and
# openssl (the CLI the TLS tests make certificates with).
set -euo pipefail
need=()
for pkg in libclang-dev qemu-utils libnbd-bin nbdkit libssl-dev pkg-config openssl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# libvhdi (Python module pyvhdi) reads VHD differencing chains, which qemu-img cannot follow;
# the export tests use it as an independent reader. Best effort: without it that check skips.
if ! python3 -c "import pyvhdi" >/dev/null 2>&1; then
    python3 -m pip install -q libvhdi-python >/dev/null 2>&1 || echo "warning: could not install libvhdi-python; the VHD chain check will be skipped" >&2
fi
# cargo-fuzz runs the libFuzzer targets of fuzz/ (scripts/fuzz.sh); a no-op when present.
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing: cargo-fuzz" >&2
    cargo install --locked --quiet cargo-fuzz --version '^0.13'
fi
