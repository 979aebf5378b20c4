//! The tiny command-line handling the small benchmark binaries share.

use std::path::PathBuf;

/// The value after `name` on the command line, or `default`.
pub fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// The `tessera` binary to measure: `--tessera PATH`, else the one beside this executable.
///
/// # Panics
///
/// When the path of the running executable cannot be determined.
pub fn tessera_path() -> PathBuf {
    let given = arg("--tessera", "");
    if given.is_empty() {
        std::env::current_exe()
            .expect("current exe")
            .parent()
            .expect("exe dir")
            .join("tessera")
    } else {
        PathBuf::from(given)
    }
}
