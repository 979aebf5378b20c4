//! Records a real NBD server's side of one client session (`src/nbd_client.rs`) as a seed
//! of the `nbd_client` target: `record_nbd SOCKET BITMAP(0|1) OUT`. The session runs over
//! one end of a socket pair; a proxy copies between the other end and the server's Unix
//! socket, keeping what the server sent. OUT is the BITMAP byte followed by those bytes,
//! which the target replays. `make-engine-corpus.sh` runs it against qemu-nbd and nbdkit.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use tessera_fuzz::nbd_client::{check_session, session, MAX_TRANSCRIPT};

/// Copies `from` to `to` until `from` ends, appending what passed to `log`.
fn pump(mut from: UnixStream, mut to: UnixStream, log: Option<&Mutex<Vec<u8>>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(log) = &log {
            log.lock().expect("log lock").extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, bitmap, out] = args.as_slice() else {
        eprintln!("usage: record_nbd SOCKET BITMAP(0|1) OUT");
        std::process::exit(2);
    };
    let bitmap = bitmap == "1";
    let server = UnixStream::connect(socket).expect("connecting to the server");
    let (client, proxy) = UnixStream::pair().expect("a socket pair");
    let log = Arc::new(Mutex::new(Vec::new()));
    let down = {
        let (from, to, log) = (
            server.try_clone().expect("clone"),
            proxy.try_clone().expect("clone"),
            log.clone(),
        );
        std::thread::spawn(move || pump(from, to, Some(&log)))
    };
    let up = std::thread::spawn(move || pump(proxy, server, None));
    let result = session(client, bitmap, 0);
    // The session's connection is dropped (NBD_CMD_DISC sent): the server hangs up.
    up.join().expect("proxy thread");
    down.join().expect("proxy thread");
    let s = result.unwrap_or_else(|e| panic!("the session failed: {e}"));
    check_session(&s, bitmap);
    let mut bytes = vec![u8::from(bitmap)];
    bytes.extend_from_slice(&log.lock().expect("log lock"));
    assert!(
        bytes.len() <= MAX_TRANSCRIPT,
        "{} bytes recorded",
        bytes.len()
    );
    std::fs::write(out, &bytes).expect("writing the transcript");
    eprintln!(
        "{out}: {} bytes; export {} bytes, data ranges {:?}, dirty ranges {:?}",
        bytes.len(),
        s.neg.size,
        s.map.0,
        s.map.1
    );
}
