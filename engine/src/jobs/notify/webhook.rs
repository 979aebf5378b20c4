//! Webhook targets: one JSON POST per event.

use std::io::Read as _;

use super::TIMEOUT;

/// Most of an answer read (the body is ignored; reading some lets the connection close
/// cleanly).
const MAX_ANSWER: u64 = 64 * 1024;

/// POSTs `doc` to `url`. Errors are `(transient, message)`: connection failures, 5xx and
/// 429 are worth another attempt; other statuses are not.
pub fn post(url: &str, doc: &serde_json::Value) -> Result<(), (bool, String)> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(TIMEOUT)
        .timeout_read(TIMEOUT)
        .timeout_write(TIMEOUT)
        // The whole request, however slowly a hostile server trickles its answer.
        .timeout(TIMEOUT)
        .redirects(0);
    let agent = if url.starts_with("https://") {
        let connector =
            crate::sync::http::tls::client_connector(None).map_err(|e| (false, e.to_string()))?;
        agent.tls_connector(connector)
    } else {
        agent
    };
    let answer = agent
        .build()
        .post(url)
        .set("Content-Type", "application/json")
        .set("User-Agent", concat!("tessera/", env!("CARGO_PKG_VERSION")))
        .send_string(&doc.to_string());
    match answer {
        Ok(response) if response.status() >= 300 => Err((
            false,
            format!(
                "the webhook answered HTTP {} (a redirect is not followed: give its final URL)",
                response.status()
            ),
        )),
        Ok(response) => {
            let mut sink = Vec::new();
            let _ = response
                .into_reader()
                .take(MAX_ANSWER)
                .read_to_end(&mut sink);
            Ok(())
        }
        Err(ureq::Error::Status(code, _)) => Err((
            code >= 500 || code == 429,
            format!("the webhook answered HTTP {code}"),
        )),
        // The transport error names the URL, which may hold a token: keep only its kind
        // and message.
        Err(ureq::Error::Transport(t)) => Err((
            true,
            format!(
                "cannot reach the webhook: {}{}",
                t.kind(),
                t.message().map(|m| format!(": {m}")).unwrap_or_default()
            ),
        )),
    }
}
