//! `--s3`: a SeaweedFS (`weed mini`, installed by scripts/ensure-deps.sh into
//! `.deps/seaweedfs/bin/weed`) on loopback, free ports, its data in the work directory, for
//! the `tessera-s3` column. It shares the machine's cores with tessera, as a server on the
//! same host would; the figures to read are the ratios to the local column of the same run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The access key the server accepts (loopback only).
pub const KEY_ID: &str = "tessera-bench";
/// Its secret.
pub const SECRET: &str = "tessera-bench-secret";
/// The bucket.
pub const BUCKET: &str = "bench";

/// A running SeaweedFS; killed (SIGKILL) when dropped: `weed mini` does not stop on SIGTERM
/// promptly.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    /// Its data directory.
    pub dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Closing the pipe makes the shell kill weed.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// A port nothing listens on, whose `+ 10000` neighbour is free too.
fn free_port() -> Result<u16> {
    loop {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
}

/// The `weed` binary: `explicit`, else the workspace's `.deps/seaweedfs/bin/weed`.
pub fn find_weed(explicit: Option<&Path>) -> Result<PathBuf> {
    let path = explicit.map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/seaweedfs/bin/weed"),
        Path::to_path_buf,
    );
    if !path.is_file() {
        bail!(
            "SeaweedFS is not installed at {} (run scripts/ensure-deps.sh, or pass --weed PATH)",
            path.display()
        );
    }
    Ok(path)
}

impl Server {
    /// Starts `weed mini` with its data in `dir` and waits until `tessera` reaches the
    /// bucket (an empty prefix answers "not a tessera repository").
    pub fn start(weed: &Path, dir: &Path, tessera: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let s3 = free_port()?;
        let mut cmd = Command::new(weed);
        cmd.arg("mini")
            .arg(format!("-dir={}", dir.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                &format!("-bucket={BUCKET}"),
                "-admin.ui=false",
                "-master.telemetry=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-volume.max=64",
                &format!("-s3.port={s3}"),
            ]);
        for flag in [
            "s3.port.grpc",
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "admin.port",
        ] {
            cmd.arg(format!("-{flag}={}", free_port()?));
        }
        // Under a shell whose standard input is our pipe: when this process ends however it
        // ends, the pipe closes and the shell kills weed, so no server outlives the run.
        let mut line: Vec<String> = vec![format!("'{}'", weed.display())];
        line.extend(cmd.get_args().map(|a| format!("'{}'", a.to_string_lossy())));
        let script = format!(
            "{} >'{}' 2>&1 & w=$!; read _; kill -9 $w; wait $w",
            line.join(" "),
            dir.join("weed.log").display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("AWS_ACCESS_KEY_ID", KEY_ID)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", weed.display()))?;
        let server = Self {
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            dir: dir.to_path_buf(),
        };
        let started = Instant::now();
        loop {
            let out = Command::new(tessera)
                .args(["list", &format!("s3://{BUCKET}/ready-probe")])
                .envs(server.env())
                .output()?;
            if String::from_utf8_lossy(&out.stderr).contains("not a tessera repository") {
                return Ok(server);
            }
            if started.elapsed() > Duration::from_secs(90) {
                bail!(
                    "SeaweedFS did not answer within 90 s: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// What `tessera` needs in its environment to reach the server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("TESSERA_S3_ENDPOINT".into(), self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID".into(), KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }
}
