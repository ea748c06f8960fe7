//! A running `ctscope watch` agent's status, asked on its socket (docs/PROTOCOL.md):
//! what the `watch` mode and `--agent` read its events and losses from.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use serde_json::Value;

/// Long enough for an agent busy taking in a flood; a run does not wait for more.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The `status` answer, or None if no agent answers on `socket`.
pub(super) fn status(socket: &Path) -> Option<Value> {
    let mut stream = UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream
        .write_all(b"{\"op\":\"status\",\"version\":1}\n")
        .ok()?;
    // A header line (`{"ok":true}`, or `{"ok":false,"error":…}` and the end), then the body.
    let mut lines = BufReader::new(stream).lines();
    let header: Value = serde_json::from_str(&lines.next()?.ok()?).ok()?;
    if header["ok"] != true {
        return None;
    }
    serde_json::from_str(&lines.next()?.ok()?).ok()
}

/// `new` events the agent took in, in every namespace.
pub(super) fn new_events(status: &Value) -> u64 {
    status["totals"]["events"]["new"].as_u64().unwrap_or(0)
}

/// What the agent did to stay in step with the kernel: reseeds after losses, dumps
/// merged, and the most events that waited for its loop at once.
pub(super) fn upkeep(status: &Value) -> Value {
    let t = &status["totals"];
    serde_json::json!({
        "reseeds": t["reseeds"],
        "dumps": t["dumps"],
        "backlog_peak": t["backlog_peak"],
    })
}

/// Events its ring buffer lost.
pub(super) fn lost(status: &Value) -> u64 {
    status["totals"]["lost"].as_u64().unwrap_or(0)
}
