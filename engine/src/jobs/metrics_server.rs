//! The daemon's `GET /metrics` endpoint (SPEC.md §26.7), on hyper's HTTP/1.1 connection.
//! Bounded: at most [`MAX_CONNECTIONS`] connections at once (others are closed at once),
//! each with a header-read timeout and a whole-connection deadline; the page is computed
//! from the history, never from a request's input.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::error::{Error, Result};

/// Most connections served at once.
const MAX_CONNECTIONS: usize = 16;
/// Longest a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest one connection lives.
#[expect(
    clippy::duration_suboptimal_units,
    reason = "Duration::from_mins needs Rust 1.91; the workspace's rust-version is 1.89"
)]
const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);

/// Computes the page.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// A bound metrics endpoint.
pub struct MetricsServer {
    /// The address bound (port 0 resolved).
    pub addr: SocketAddr,
    socket: std::net::TcpListener,
}

impl MetricsServer {
    /// Binds `listen`; an address that is not loopback needs `insecure_http` (SPEC.md §22.3's
    /// rule: plain HTTP stays on the machine unless the operator says otherwise).
    pub fn bind(listen: &str, insecure_http: bool) -> Result<Self> {
        let cannot = |e: &dyn std::fmt::Display| Error::Listen {
            address: listen.to_string(),
            reason: e.to_string(),
        };
        let socket = std::net::TcpListener::bind(listen).map_err(|e| cannot(&e))?;
        let addr = socket.local_addr().map_err(|e| cannot(&e))?;
        if !insecure_http && !addr.ip().is_loopback() {
            return Err(Error::Usage(format!(
                "refusing to serve /metrics over plain HTTP on {addr}, which is not a loopback address: bind 127.0.0.1 and scrape through a TLS proxy, or give --metrics-insecure-http if the network is trusted"
            )));
        }
        socket.set_nonblocking(true).map_err(|e| cannot(&e))?;
        Ok(Self { addr, socket })
    }

    /// Serves on a thread of its own until the process ends.
    pub fn spawn(self, render: Render) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the metrics server", e))?;
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || runtime.block_on(serve(self.socket, render)))
            .map_err(|e| Error::io("starting the metrics server", e))?;
        Ok(())
    }
}

async fn serve(socket: std::net::TcpListener, render: Render) {
    let Ok(listener) = tokio::net::TcpListener::from_std(socket) else {
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let render = Arc::clone(&render);
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let render = Arc::clone(&render);
                    async move { Ok::<_, std::convert::Infallible>(answer(&req, &render)) }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, conn).await;
            drop(permit);
        });
    }
}

fn answer(
    req: &hyper::Request<hyper::body::Incoming>,
    render: &Render,
) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (200, super::metrics::CONTENT_TYPE, render()),
        (&hyper::Method::GET, _) => (404, "text/plain", "not found: try /metrics\n".into()),
        _ => (405, "text/plain", "only GET\n".into()),
    };
    hyper::Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}
