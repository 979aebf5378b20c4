//! libvhdi (the `pyvhdi` Python module, pip package `libvhdi-python`) as an independent VHD
//! reader: unlike qemu's `vpc` driver, it follows a differencing disk to its parent.
//! `scripts/ensure-deps.sh` installs it; a missing module fails the test that needs it.

use std::path::Path;
use std::process::Command;

/// Reads `chain[0]` through libvhdi into `out`, giving it `chain[1..]` as parent,
/// grandparent, …; checks on the way that each child is a differencing disk (type 4) whose
/// parent identifier is its parent's identifier.
///
/// # Panics
///
/// When `python3` or `pyvhdi` is missing, or libvhdi refuses the chain.
#[track_caller]
pub fn vhdi_read(chain: &[&Path], out: &Path) {
    let script = r"
import sys, pyvhdi
out, paths = sys.argv[1], sys.argv[2:]
files = []
for p in paths:
    f = pyvhdi.file(); f.open(p); files.append(f)
for child, parent in zip(files, files[1:]):
    assert child.disk_type == 4, child.disk_type
    assert child.get_parent_identifier() == parent.get_identifier(), (child.get_parent_identifier(), parent.get_identifier())
for child, parent in reversed(list(zip(files, files[1:]))):
    child.set_parent(parent)
open(out, 'wb').write(files[0].read_buffer_at_offset(files[0].media_size, 0))
";
    let o = Command::new("python3")
        .args(["-c", script])
        .arg(out)
        .args(chain)
        .output()
        .unwrap_or_else(|e| panic!("running python3: {e} (run scripts/ensure-deps.sh)"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains("No module named 'pyvhdi'"),
        "python3 module pyvhdi (pip package libvhdi-python) is missing: run \
         scripts/ensure-deps.sh\n{stderr}"
    );
    assert!(
        o.status.success(),
        "libvhdi read of {chain:?} failed: {stderr}"
    );
}
