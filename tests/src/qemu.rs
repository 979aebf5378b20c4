//! Running the real disk-image tools (`qemu-img`, `qemu-io`, `qemu-nbd`, `nbdkit`) from
//! tests. `scripts/ensure-deps.sh` installs them (qemu-utils, nbdkit); a missing tool fails
//! the test with the package to install.

use std::path::Path;
use std::process::Command;

/// Runs `program args...`, panics with its output unless it succeeds, returns its stdout.
#[track_caller]
pub fn run_tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("running {program}: {e} (run scripts/ensure-deps.sh to install it)")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-img ARGS...`.
#[track_caller]
pub fn qemu_img(args: &[&str]) -> String {
    run_tool("qemu-img", args)
}

/// `qemu-io -f FORMAT -c COMMAND IMAGE`, e.g. `qemu_io("qcow2", img, "write -P 0xab 0 64k")`.
#[track_caller]
pub fn qemu_io(format: &str, image: &Path, command: &str) {
    let image = image.to_str().expect("UTF-8 path");
    let out = run_tool("qemu-io", &["-f", format, "-c", command, image]);
    // qemu-io reports some failures on stdout with a zero exit status.
    assert!(
        !out.contains("failed") && !out.contains("error"),
        "qemu-io {command:?} on {image}: {out}"
    );
}

/// Converts any image qemu reads into a raw file: the independent oracle for restores.
#[track_caller]
pub fn convert_to_raw(image: &Path, format: &str, raw: &Path) {
    qemu_img(&[
        "convert",
        "-f",
        format,
        "-O",
        "raw",
        image.to_str().expect("UTF-8 path"),
        raw.to_str().expect("UTF-8 path"),
    ]);
}
