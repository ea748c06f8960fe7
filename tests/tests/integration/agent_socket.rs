//! The agent's socket under bad input (issue 20): a wrong `--socket` costs the host no
//! file, and the socket protocol refuses what it does not understand. The agent runs at
//! tier 3 (no BPF), so neither trial needs it.

use std::{
    fs,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::{
        fs::{DirBuilderExt as _, MetadataExt as _},
        net::{UnixListener, UnixStream},
    },
    path::Path,
    time::Duration,
};

use ctscope_tests::agent::{self, Agent, SocketVia};
use serde_json::Value;

const TIER3: &[&str] = &["--tier", "3"];

/// A uid that owns nothing here (nobody).
const FOREIGN_UID: u32 = 65534;

/// A regular file, a symlink and a foreign directory survive unchanged and the agent
/// exits 1 naming why; a stale socket is replaced; a live one is not taken over; on
/// SIGTERM the agent removes its own socket and no one else's.
pub fn socket_path() {
    let scratch = agent::private_dir();

    let file = scratch.path().join("precious");
    fs::write(&file, "keep me\n").unwrap();
    for via in [SocketVia::Flag, SocketVia::Env] {
        refused(&file, via, "is a regular file, not a socket");
        assert_eq!(fs::read_to_string(&file).unwrap(), "keep me\n");
    }

    let link = scratch.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    refused(&link, SocketVia::Flag, "is a symbolic link, not a socket");
    assert!(
        fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_to_string(&file).unwrap(), "keep me\n");

    let foreign = scratch.path().join("foreign");
    fs::DirBuilder::new().mode(0o755).create(&foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(FOREIGN_UID), None).unwrap();
    refused(
        &foreign.join("agent.sock"),
        SocketVia::Flag,
        "is owned by uid 65534",
    );
    let meta = fs::metadata(&foreign).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (FOREIGN_UID, 0o755));
    assert_eq!(
        fs::read_dir(&foreign).unwrap().count(),
        0,
        "nothing created"
    );
    refused(&foreign, SocketVia::Flag, "is a directory, not a socket");

    // Bound, then closed: no one listens.
    let stale = scratch.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let agent = Agent::try_start(&stale, SocketVia::Flag, TIER3)
        .unwrap_or_else(|e| panic!("a stale socket was not replaced: {e:?}"));
    assert_eq!(agent.status()["protocol"], 1);

    refused(&stale, SocketVia::Env, "an agent already listens");
    assert_eq!(
        agent.status()["protocol"],
        1,
        "the first agent still answers"
    );
    agent.stop();
    assert!(!exists(&stale), "the agent left its socket behind");

    // Someone else's socket at the path after the agent started: it stays.
    let path = scratch.path().join("replaced.sock");
    let agent = Agent::try_start(&path, SocketVia::Flag, TIER3).unwrap();
    fs::remove_file(&path).unwrap();
    let _other = UnixListener::bind(&path).unwrap();
    agent.stop();
    assert!(
        UnixStream::connect(&path).is_ok(),
        "the agent removed a socket it did not bind"
    );
}

/// Raw requests: a bad filter key, a wrong type, an unknown op, an unknown kind and an
/// unsupported version each get `ok: false` naming what is wrong; good requests (also
/// the CLI's own) are answered, and `status` carries protocol 1.
pub fn protocol() {
    let agent = Agent::start(TIER3);
    let list =
        |filter: &str| format!(r#"{{"op":"list","scope":"all","filter":{filter},"json":true}}"#);
    let bad = [
        (list(r#"{"src":"10.99.0.2"}"#), "unknown field `src`"),
        (
            r#"{"op":"list","scope":"all","filter":{},"json":"yes"}"#.into(),
            "json: invalid type",
        ),
        (list(r#"{"proto":"udp"}"#), "filter.proto: invalid type"),
        (r#"{"op":"bogus"}"#.into(), "unknown variant `bogus`"),
        (
            r#"{"op":"events","filter":{"kinds":["bogus"]},"json":true,"timestamp":false}"#.into(),
            "filter.kinds.[0]: unknown variant `bogus`",
        ),
        (
            r#"{"op":"status","version":2}"#.into(),
            "unsupported protocol version 2",
        ),
    ];
    for (request, reason) in &bad {
        let (header, _) = ask(agent.socket(), request);
        assert_eq!(header["ok"], false, "{request} was accepted: {header}");
        let error = header["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(reason),
            "{request}: {error:?} lacks {reason:?}"
        );
    }

    let (header, _) = ask(agent.socket(), &list(r#"{"orig_src":"10.99.0.2"}"#));
    assert_eq!(header["ok"], true, "{header}");
    let (header, body) = ask(agent.socket(), r#"{"op":"status","version":1}"#);
    assert_eq!(header["ok"], true, "{header}");
    let status: Value = serde_json::from_str(&body).expect("status is JSON");
    assert_eq!(status["protocol"], 1, "{status}");
    // The CLI's own requests.
    agent.ctscope(&["list", "-s", "10.99.0.2"]);
    agent.ctscope(&["stats"]);
    agent.ctscope(&["top"]);
    assert_eq!(agent.status()["protocol"], 1);
    agent.stop();
}

/// Sends one request line; the answer's header (parsed) and body.
fn ask(socket: &Path, request: &str) -> (Value, String) {
    let mut stream = UnixStream::connect(socket).expect("the agent answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut answer = BufReader::new(stream);
    let mut header = String::new();
    answer.read_line(&mut header).expect("a header line");
    let mut body = String::new();
    answer.read_to_string(&mut body).expect("the body");
    let header = serde_json::from_str(&header)
        .unwrap_or_else(|e| panic!("header {header:?} is not JSON: {e}"));
    (header, body)
}

/// The agent refuses `socket`: exit 1, `reason` on stderr.
fn refused(socket: &Path, via: SocketVia, reason: &str) {
    match Agent::try_start(socket, via, TIER3) {
        Ok(_) => panic!("the agent started on {} ({via:?})", socket.display()),
        Err(e) => {
            assert_eq!(e.status.code(), Some(1), "{e:?}");
            assert!(
                e.stderr.contains(reason),
                "{} ({via:?}): stderr lacks {reason:?}: {}",
                socket.display(),
                e.stderr
            );
        }
    }
}

fn exists(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok()
}
