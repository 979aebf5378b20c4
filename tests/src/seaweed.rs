//! A real SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process) on
//! loopback, one per test, on free ports, for the S3 tests. Installed by
//! `scripts/ensure-deps.sh` into `.deps/seaweedfs/bin/weed`; a test that cannot start it
//! fails and says why (it never skips).
//!
//! `weed` runs under a small `sh` whose standard input is a pipe held by [`Seaweed`] (a
//! [`Tied`] process): when the test ends (the value is dropped) or its process dies however
//! it dies, the pipe closes and the shell kills `weed` with SIGKILL (`weed mini` does not stop
//! on SIGTERM or SIGINT within minutes), so no server outlives its test. Telemetry, WebDAV
//! and the Iceberg and Lance endpoints are off, and every port is bound on 127.0.0.1 only.
//!
//! The data directory is on `/dev/shm` when there is one: SeaweedFS turns every volume
//! read-only (and every write into HTTP 500) when the disk holding it has less than 1 % free,
//! which a shared build machine's disk often has.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tessera_engine::storage::s3::{Credentials, RetryBounds, S3Options};

/// The access key the server accepts.
pub const KEY_ID: &str = "tessera-test-key";
/// Its secret (the tests check that it never shows in messages).
pub const SECRET: &str = "tessera-test-secret-Zq8w";

/// How long the server may take to answer S3 requests after starting.
const READY_WITHIN: Duration = Duration::from_mins(1);

/// A running SeaweedFS; stopped when dropped.
pub struct Seaweed {
    process: Option<Tied>,
    args: Vec<String>,
    s3_port: u16,
    /// Every port it was given (released when it is dropped).
    ports: Vec<u16>,
    /// Its data directory and log.
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT` of the S3 gateway.
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
}

/// A server run under a small `sh` whose standard input is a pipe held here: when the value
/// is dropped, or this test process dies however it dies, the pipe closes and the shell kills
/// the server with SIGKILL, so no server outlives its test (see the module docs).
pub struct Tied {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Tied {
    /// Starts `args` (the program first) with the variables `env` added to the environment,
    /// its output appended to `log`.
    pub fn spawn(args: &[String], env: &[(&str, &str)], log: &Path) -> Self {
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        let script = format!(
            "{} >>'{}' 2>&1 & w=$!; read _; kill -9 $w; wait $w",
            quoted.join(" "),
            log.display()
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            // The shell's own "Killed" notice when it kills the server; it logs to its file.
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting sh for {}: {e}", args[0]));
        let stdin = child.stdin.take();
        Self { child, stdin }
    }
}

impl Drop for Tied {
    /// Closes the pipe (the shell kills the server) and waits for the shell, up to 20 s.
    fn drop(&mut self) {
        drop(self.stdin.take());
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `weed` binary ensure-deps installs.
pub fn weed_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.deps/seaweedfs/bin/weed")
}

/// Ports handed out by [`free_port`] to servers of this test process that still exist:
/// a killed server keeps its ports for [`Seaweed::restart`], so another test starting
/// meanwhile must not take them.
static RESERVED: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Where [`free_port`] looks: below the kernel's ephemeral range (32768 and up on Linux),
/// so no outgoing connection of any process takes one of them as its source port between a
/// kill and a restart (which once made a restarted filer fail with "address already in
/// use"); each port's `+ 10000` neighbour, where `weed` puts a gRPC port unless told
/// otherwise, stays below it too.
const PORT_RANGE: std::ops::Range<u16> = 12_000..22_000;

/// A port nothing listens on now, not reserved by another server of this process, whose
/// `+ 10000` neighbour is free too; reserved until [`release_ports`].
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut reserved = RESERVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut rng = rand::thread_rng();
    for _ in 0..10_000 {
        let port = rng.gen_range(PORT_RANGE);
        if !reserved.contains(&port)
            && TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
        {
            reserved.insert(port);
            return port;
        }
    }
    panic!("no free port pair in {PORT_RANGE:?} on 127.0.0.1");
}

/// Gives `ports` back for other servers.
pub fn release_ports(ports: &[u16]) {
    let mut reserved = RESERVED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for port in ports {
        reserved.remove(port);
    }
}

/// A temporary directory for server data: on `/dev/shm` if possible (see the module docs).
pub fn data_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::Builder::new()
            .prefix("tessera-s3-")
            .tempdir_in(shm)
        {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir for SeaweedFS")
}

impl Seaweed {
    /// Starts a server with bucket `bucket` and waits until its S3 gateway answers.
    pub fn start(bucket: &str) -> Self {
        let weed = weed_bin();
        assert!(
            weed.exists(),
            "SeaweedFS is not installed at {}: run scripts/ensure-deps.sh",
            weed.display()
        );
        let dir = data_dir();
        let s3 = free_port();
        let ports = [
            ("s3.port", s3),
            ("s3.port.grpc", free_port()),
            ("master.port", free_port()),
            ("master.port.grpc", free_port()),
            ("volume.port", free_port()),
            ("volume.port.grpc", free_port()),
            ("filer.port", free_port()),
            ("filer.port.grpc", free_port()),
            ("admin.port", free_port()),
        ];
        let mut args = vec![
            format!("{}", weed.display()),
            "mini".into(),
            format!("-dir={}", dir.path().display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-bucket={bucket}"),
            "-admin.ui=false".into(),
            "-master.telemetry=false".into(),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            "-master.volumeSizeLimitMB=64".into(),
            // Not derived from the free disk space: on a nearly full shared disk the
            // automatic limit comes out at zero and every write fails with 500.
            "-volume.max=32".into(),
        ];
        args.extend(ports.iter().map(|(flag, port)| format!("-{flag}={port}")));
        let mut server = Self {
            process: None,
            args,
            s3_port: s3,
            ports: ports.iter().map(|(_, port)| *port).collect(),
            endpoint: format!("http://127.0.0.1:{s3}"),
            bucket: bucket.to_string(),
            dir,
        };
        server.run();
        server
    }

    /// Starts `weed` (again, on the same ports and data) and waits until it answers.
    fn run(&mut self) {
        let env = [
            ("AWS_ACCESS_KEY_ID", KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ];
        self.process = Some(Tied::spawn(&self.args, &env, &self.log_path()));
        self.wait_ready();
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }

    /// Kills the server at once (SIGKILL: what a crash or power loss of the server does to
    /// requests in flight); its data stays for [`Self::restart`].
    pub fn kill(&mut self) {
        // Dropping it closes the pipe: the shell kills weed.
        drop(self.process.take());
        // The ports are free once nothing accepts on the S3 port.
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end && TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a killed server again on its ports and data, and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.process.is_none(), "restart of a running server");
        self.run();
    }

    /// Polls until a signed listing of the bucket succeeds (the gateway is up and the
    /// bucket exists); fails the test with the server's log otherwise.
    fn wait_ready(&self) {
        let start = Instant::now();
        let mut last = String::from("the S3 port never opened");
        while start.elapsed() < READY_WITHIN {
            if TcpStream::connect(("127.0.0.1", self.s3_port)).is_ok() {
                let location = format!("s3://{}/ready-probe", self.bucket);
                match tessera_engine::storage::s3::S3Backend::connect(
                    tessera_engine::storage::s3::S3Location::parse(&location).expect("location"),
                    &self.options(),
                ) {
                    Ok(_) => return,
                    Err(e) => last = e.to_string(),
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let tail = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let tail: String = tail.lines().rev().take(30).collect::<Vec<_>>().join("\n");
        panic!(
            "SeaweedFS did not become ready within {READY_WITHIN:?} (last: {last}); log, newest first:\n{tail}"
        );
    }

    /// Options reaching this server with the right credentials and quick retries.
    pub fn options(&self) -> S3Options {
        options_for(&self.endpoint, KEY_ID, SECRET)
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn location(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Environment variables for the `tessera` binary reaching this server: endpoint and
    /// credentials (the credentials never go on a command line).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        env_for(&self.endpoint)
    }

    /// boto3, an independent S3 client, on this server (e.g. to read Object Lock retentions
    /// back: SeaweedFS stores and enforces them once the bucket has Object Lock enabled).
    pub fn boto(&self) -> crate::moto::Boto {
        crate::moto::Boto::new(&self.endpoint)
    }

    /// The Object Lock retention of `key` in the bucket, as HeadObject reports it.
    pub fn retention(&self, key: &str) -> Option<crate::moto::Retention> {
        self.boto().retention(&self.bucket, key)
    }
}

/// Environment variables for the `tessera` binary reaching the S3 server at `endpoint` with
/// [`KEY_ID`] and [`SECRET`]: endpoint, credentials and region.
pub fn env_for(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TESSERA_S3_ENDPOINT", endpoint.to_string()),
        ("AWS_ACCESS_KEY_ID", KEY_ID.to_string()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ]
}

/// Options for `endpoint` with the given key, path-style, and retries bounded for tests
/// (up to 10 retries within 30 s, backoff from 20 ms).
pub fn options_for(endpoint: &str, key_id: &str, secret: &str) -> S3Options {
    S3Options {
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        path_style: Some(true),
        profile: None,
        credentials: Some(Credentials::new(key_id.into(), secret.into(), None)),
        retry: RetryBounds {
            max_retries: 10,
            max_elapsed: Duration::from_secs(30),
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            request_timeout: Duration::from_mins(1),
            connect_timeout: Duration::from_secs(5),
        },
        insecure_http: false,
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.kill();
        release_ports(&self.ports);
    }
}

/// A client of an S3 repository with its own cache directory (what one machine has).
pub struct Client {
    /// `s3://BUCKET/PREFIX`.
    pub location: String,
    /// Connection options and the cache directory.
    pub options: tessera_engine::location::LocationOptions,
    cache: tempfile::TempDir,
}

impl Client {
    /// A client of `location` with `options` and a new, empty cache directory.
    pub fn new(location: &str, options: S3Options) -> Self {
        let cache = tempfile::tempdir().expect("cache dir");
        Self {
            location: location.to_string(),
            options: tessera_engine::location::LocationOptions {
                s3: options,
                cache_dir: Some(cache.path().join("cache")),
            },
            cache,
        }
    }

    /// The cache directory.
    pub fn cache_dir(&self) -> PathBuf {
        self.cache.path().join("cache")
    }

    /// The repository's storage.
    pub fn storage(&self) -> tessera_engine::repo::RepoStorage {
        tessera_engine::repo::RepoStorage::at(&self.location, &self.options)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.location))
    }

    /// Creates the repository.
    pub fn init(&self) {
        tessera_engine::Repository::init_at(
            &self.location,
            &self.options,
            tessera_engine::InitOptions::default(),
            None,
        )
        .unwrap_or_else(|e| panic!("init {}: {e}", self.location));
    }

    /// Opens it as the writer (the cache is brought up to date first).
    pub fn writer(&self) -> tessera_engine::Repository {
        tessera_engine::Repository::open_writer_on(
            self.storage(),
            &tessera_engine::crypto::NoSecret,
        )
        .unwrap_or_else(|e| panic!("opening {} as writer: {e}", self.location))
    }

    /// Opens it for reading (the cache is brought up to date first).
    pub fn reader(&self) -> tessera_engine::Repository {
        tessera_engine::Repository::open_on(self.storage(), &tessera_engine::crypto::NoSecret)
            .unwrap_or_else(|e| panic!("opening {} for reading: {e}", self.location))
    }
}

/// Every object under the repository's prefix with its size: what "nothing was written"
/// is checked against.
pub fn bucket_listing(
    backend: &dyn tessera_engine::storage::Backend,
) -> std::collections::BTreeMap<String, u64> {
    backend
        .list("")
        .expect("listing the bucket")
        .into_iter()
        .map(|k| {
            let size = backend
                .size(&k)
                .expect("sizing an object")
                .expect("a listed object exists");
            (k.to_string(), size)
        })
        .collect()
}

/// The `tessera` binary as one client machine of a [`Seaweed`] server: endpoint and
/// credentials in its environment (never on its command line), its own `HOME` (no
/// `~/.aws` unless a test writes one) and `XDG_CACHE_HOME` (so the default cache directory
/// is its own), and none of the caller's AWS settings.
pub struct CliClient {
    env: Vec<(&'static str, String)>,
    home: tempfile::TempDir,
}

/// AWS settings of the caller's environment a client must not inherit.
const INHERITED_AWS: [&str; 9] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "TESSERA_S3_ENDPOINT",
];

impl CliClient {
    /// A client of `server` with the right credentials.
    pub fn new(server: &Seaweed) -> Self {
        Self::with_env(server.env())
    }

    /// A client with exactly these settings (endpoint, credentials, region).
    pub fn with_env(env: Vec<(&'static str, String)>) -> Self {
        Self {
            env,
            home: tempfile::tempdir().expect("home directory of a client"),
        }
    }

    /// Its home directory (`~/.aws` goes here).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Its cache home (`XDG_CACHE_HOME`): default cache directories are under
    /// `CACHE_HOME/tessera/BUCKET/`.
    pub fn cache_home(&self) -> PathBuf {
        self.home.path().join("cache")
    }

    /// A `Command` for `tessera ARGS` in this client's environment.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        // As `init_repo`: plain unless the test names `--encryption`.
        let subcommand = args.iter().find(|a| *a != "--json");
        if subcommand.is_some_and(|a| a == "init") && !args.iter().any(|a| a == "--encryption") {
            args.extend(["--encryption".into(), "none".into()]);
        }
        let mut cmd = crate::tessera_cmd(args);
        for var in INHERITED_AWS {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.home.path())
            .env("XDG_CACHE_HOME", self.cache_home())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `tessera ARGS` to completion.
    pub fn run<I, S>(&self, args: I) -> crate::Out
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        crate::Out::of(&args, &self.cmd(&args).output().expect("running tessera"))
    }

    /// Runs `tessera --json ARGS`, asserting success; returns the document.
    #[track_caller]
    pub fn json<I, S>(&self, args: I) -> serde_json::Value
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut all: Vec<std::ffi::OsString> = vec!["--json".into()];
        all.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        let out = self.run(&all);
        out.ok();
        let v = out.json();
        assert_eq!(v["ok"], true, "{out}");
        v
    }
}
