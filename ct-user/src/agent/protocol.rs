//! The agent's socket protocol (docs/PROTOCOL.md), JSON as in ripgrep's `--json`: the
//! client writes one request object on one line (`{"op":"list","version":1,...}`); the
//! agent answers with one header line (`{"ok":true}` or `{"ok":false,"error":"..."}`) and
//! then the body, exactly the lines the command prints (text or JSON Lines), until it
//! closes the connection. `events` keeps the connection open and streams.
//!
//! The agent refuses what it does not understand (unknown ops, fields, kinds, versions,
//! wrong types) and names it, rather than answer a request it half read.

use std::path::Path;

use ct_netlink::{Tuple, TupleFilter};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::pipeline::filter::Filter;

/// Where the agent listens unless `--socket` or `CTSCOPE_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ctscope/agent.sock";

/// The protocol version this agent speaks. `status` answers carry it; a request may
/// name the version it was written for.
pub const PROTOCOL: u64 = 1;

/// Which namespaces a request covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One namespace, by inode.
    Netns(u32),
    All,
}

impl Scope {
    pub fn covers(self, netns: u32) -> bool {
        match self {
            Scope::Netns(n) => n == netns,
            Scope::All => true,
        }
    }

    /// Whether lines are tagged with their namespace (as --all-netns does).
    pub fn tags(self) -> bool {
        self == Scope::All
    }
}

/// One request. In Rust the enum is externally tagged (`{"list":{...}}`), which lets
/// serde name the path of a bad field; on the wire the op is a field of the object
/// ([`Request::to_line`], [`Request::parse`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// `ctscope list`.
    List {
        scope: Scope,
        filter: TupleFilter,
        json: bool,
    },
    /// `ctscope get`: by original tuple, or by reply tuple.
    Get {
        netns: u32,
        zone: Option<u16>,
        tuple: Tuple,
        json: bool,
    },
    /// `ctscope top`: who fills the table, from the agent's live table.
    Top {
        scope: Scope,
        by: crate::render::top::TopBy,
        n: usize,
        json: bool,
    },
    /// `ctscope timeouts`: how long ended flows lived, one [`NsLifetimes`] line per
    /// namespace asked for.
    Lifetimes { netns: Vec<u32> },
    /// `ctscope diagnose` and `timeouts`: what the agent's table holds, one [`NsCensus`]
    /// line per namespace asked for, so they need not dump it.
    Census { netns: Vec<u32> },
    /// `ctscope stats`: counters, attribution and the unexplained remainder.
    Stats { scope: Scope, json: bool },
    /// `ctscope events`: the agent's event stream from now on.
    Events {
        filter: Filter,
        json: bool,
        timestamp: bool,
    },
    /// What the agent runs on and how it is doing (one JSON object). A struct variant,
    /// so that unknown fields are refused here too.
    Status {},
}

impl Request {
    /// The request as one line on the wire: its fields, `op` and `version`.
    pub fn to_line(&self) -> serde_json::Result<Vec<u8>> {
        let mut wire = Map::new();
        if let Value::Object(by_op) = serde_json::to_value(self)? {
            for (op, fields) in by_op {
                wire.insert("op".into(), op.into());
                wire.insert("version".into(), PROTOCOL.into());
                if let Value::Object(fields) = fields {
                    wire.extend(fields);
                }
            }
        }
        let mut line = serde_json::to_vec(&wire)?;
        line.push(b'\n');
        Ok(line)
    }

    /// Reads one request line. Errors name what is wrong and where (`filter.src: unknown
    /// field ...`), for the answer's header.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let value: Value =
            serde_json::from_slice(line).map_err(|e| format!("bad request: not JSON: {e}"))?;
        let Value::Object(mut wire) = value else {
            return Err(r#"bad request: send one JSON object, such as {"op":"status"}"#.into());
        };
        check_version(wire.remove("version"))?;
        let op = match wire.remove("op") {
            Some(Value::String(op)) => op,
            Some(other) => return Err(format!("bad request: op: expected a string, got {other}")),
            None => {
                return Err(r#"bad request: missing field `op`, such as {"op":"status"} (docs/PROTOCOL.md)"#.into());
            }
        };
        let by_op = Value::Object(Map::from_iter([(op, Value::Object(wire))]));
        serde_path_to_error::deserialize(by_op).map_err(|e| bad_field(&e))
    }
}

/// A request's `version`, if any, must be the one this agent speaks.
fn check_version(version: Option<Value>) -> Result<(), String> {
    match version {
        Some(v) if v != PROTOCOL => Err(format!(
            "unsupported protocol version {v}: this agent speaks version {PROTOCOL} \
             (docs/PROTOCOL.md)"
        )),
        _ => Ok(()),
    }
}

/// Names the field an error is about, as a path from the request (`filter.kinds`). The
/// first segment is the op (the enum's variant); an error before it is the op's own.
fn bad_field(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let mut segments = e.path().iter();
    if segments.next().is_none() {
        return format!("bad request: op: {}", e.inner());
    }
    let path: Vec<String> = segments.map(ToString::to_string).collect();
    if path.is_empty() {
        format!("bad request: {}", e.inner())
    } else {
        format!("bad request: {}: {}", path.join("."), e.inner())
    }
}

/// One namespace's lifetimes, as the `lifetimes` answer carries them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NsLifetimes {
    pub netns: u32,
    pub lifetimes: crate::lifetimes::Lifetimes,
}

/// One namespace's table as the `census` answer carries it: counted from the agent's
/// rows (seconds left counted down to the answer), or `None` when the agent does not
/// know the namespace (the CLI dumps it then).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NsCensus {
    pub netns: u32,
    pub census: Option<crate::diagnose::census::Census>,
}

/// The first line of every answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Header {
    pub fn line(error: Option<String>) -> Vec<u8> {
        let mut v = serde_json::to_vec(&Header {
            ok: error.is_none(),
            error,
        })
        .unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// The socket path a command uses: `--socket`, else `CTSCOPE_SOCKET` (unless empty),
/// else the default.
pub fn socket_path(flag: Option<&Path>) -> std::path::PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("CTSCOPE_SOCKET")
                .filter(|v| !v.is_empty())
                .map(Into::into)
        })
        .unwrap_or_else(|| DEFAULT_SOCKET.into())
}

#[cfg(test)]
mod tests {
    /// The `protocol` fuzz target's seeds (fuzz/corpus/protocol) are requests the agent
    /// accepts, so fuzzing starts from the real grammar.
    #[test]
    fn fuzz_seeds_parse() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/protocol");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/protocol") {
            let path = entry.unwrap().path();
            let line = std::fs::read(&path).unwrap();
            if let Err(e) = Request::parse(&line) {
                panic!("{}: {e}", path.display());
            }
            seen += 1;
        }
        assert!(seen >= 8, "one seed per operation, found {seen}");
    }

    use std::net::IpAddr;

    use super::*;
    use crate::render::top::TopBy;

    /// One request of every op, with every kind of field set.
    fn every_op() -> Vec<Request> {
        let a: IpAddr = "10.99.0.1".parse().unwrap();
        let b: IpAddr = "10.99.0.2".parse().unwrap();
        let requests = vec![
            Request::List {
                scope: Scope::All,
                filter: TupleFilter {
                    family: Some(ct_netlink::Family::Ipv4),
                    proto: Some(17),
                    orig_src: Some(a),
                    reply_dst_port: Some(53),
                    mark: Some((1, 0xff)),
                    status: Some(8),
                    ..Default::default()
                },
                json: true,
            },
            Request::Get {
                netns: 4026531840,
                zone: Some(7),
                tuple: Tuple::ports(17, a, b, 1000, 53),
                json: false,
            },
            Request::Top {
                scope: Scope::Netns(12),
                by: TopBy::Dport,
                n: 5,
                json: true,
            },
            Request::Lifetimes { netns: vec![1, 2] },
            Request::Census { netns: vec![3] },
            Request::Stats {
                scope: Scope::Netns(3),
                json: false,
            },
            Request::Events {
                filter: Filter {
                    kinds: vec![
                        crate::event::RecordKind::New,
                        crate::event::RecordKind::Lost,
                    ],
                    src: Some(b),
                    dport: Some(53),
                    ..Default::default()
                },
                json: true,
                timestamp: true,
            },
            Request::Status {},
        ];
        // Fails to compile when an op is added: add it above.
        for r in &requests {
            match r {
                Request::List { .. }
                | Request::Get { .. }
                | Request::Top { .. }
                | Request::Lifetimes { .. }
                | Request::Census { .. }
                | Request::Stats { .. }
                | Request::Events { .. }
                | Request::Status {} => {}
            }
        }
        requests
    }

    fn refused(line: &str) -> String {
        match Request::parse(line.as_bytes()) {
            Ok(r) => panic!("{line} was accepted as {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_op_round_trips() {
        for request in every_op() {
            let line = request.to_line().unwrap();
            let wire: Value = serde_json::from_slice(&line).unwrap();
            assert!(wire["op"].is_string(), "{wire}");
            assert_eq!(wire["version"], PROTOCOL, "{wire}");
            let back = Request::parse(&line)
                .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&line)));
            assert_eq!(back.to_line().unwrap(), line);
        }
    }

    #[test]
    fn wire_form_is_flat_and_version_is_optional() {
        let line = Request::Stats {
            scope: Scope::All,
            json: true,
        }
        .to_line()
        .unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"json\":true,\"op\":\"stats\",\"scope\":\"all\",\"version\":1}\n"
        );
        let r = Request::parse(br#"{"op":"status"}"#).unwrap();
        assert!(matches!(r, Request::Status {}));
        let r = Request::parse(br#"{"op":"list","scope":{"netns":5},"filter":{},"json":false}"#);
        assert!(matches!(r, Ok(Request::List { .. })), "{r:?}");
        let r = Request::parse(br#"{"op":"events","filter":{},"json":true,"timestamp":false}"#);
        assert!(matches!(r, Ok(Request::Events { .. })), "{r:?}");
    }

    #[test]
    fn refuses_what_it_does_not_understand_and_names_it() {
        let list = |filter: &str| {
            format!(r#"{{"op":"list","scope":"all","filter":{filter},"json":false}}"#)
        };
        let e = refused(&list(r#"{"src":"10.99.0.2"}"#));
        assert!(e.contains("filter.src: unknown field `src`"), "{e}");
        let e = refused(&list(r#"{"proto":"udp"}"#));
        assert!(e.contains("filter.proto: invalid type: string"), "{e}");
        let e = refused(r#"{"op":"list","scope":"all","filter":{},"json":"yes"}"#);
        assert!(e.contains("json: invalid type"), "{e}");
        let e = refused(r#"{"op":"list","scope":"all","filter":{},"json":false,"x":1}"#);
        assert!(e.contains("unknown field `x`"), "{e}");
        let e = refused(r#"{"op":"status","verbose":true}"#);
        assert!(e.contains("unknown field `verbose`"), "{e}");
        let e = refused(r#"{"op":"bogus"}"#);
        assert!(e.contains("op: unknown variant `bogus`"), "{e}");
        let e = refused(
            r#"{"op":"events","filter":{"kinds":["bogus"]},"json":true,"timestamp":false}"#,
        );
        assert!(
            e.contains("filter.kinds.[0]: unknown variant `bogus`"),
            "{e}"
        );
        assert!(e.contains("lost"), "lists the kinds: {e}");
        let e = refused(
            r#"{"op":"events","filter":{"srcc":"10.0.0.1"},"json":true,"timestamp":false}"#,
        );
        assert!(e.contains("filter.srcc: unknown field `srcc`"), "{e}");
        let e = refused(
            r#"{"op":"get","netns":1,"zone":null,"json":false,"tuple":{"src":"10.0.0.1","dst":"10.0.0.2","proto":17,"sport":1,"dport":2,"port":3}}"#,
        );
        assert!(e.contains("tuple.port: unknown field `port`"), "{e}");
        let e = refused(r#"{"op":"status","version":2}"#);
        assert!(
            e.contains("version 2") && e.contains("speaks version 1"),
            "{e}"
        );
        let e = refused(r#"{"op":"status","version":"1"}"#);
        assert!(e.contains("version \"1\""), "{e}");
        let e = refused(r#"{"version":1}"#);
        assert!(e.contains("missing field `op`"), "{e}");
        let e = refused(r#"["status"]"#);
        assert!(e.contains("one JSON object"), "{e}");
        let e = refused("status");
        assert!(e.contains("not JSON"), "{e}");
        let e = refused(r#"{"op":"list","scope":"all","json":false}"#);
        assert!(e.contains("missing field `filter`"), "{e}");
    }
}
