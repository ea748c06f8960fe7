//! The agent's socket protocol, JSON as in ripgrep's `--json`: the client writes one
//! request object on one line; the agent answers with one header line (`{"ok":true}` or
//! `{"ok":false,"error":"..."}`) and then the body, exactly the lines the command prints
//! (text or JSON Lines), until it closes the connection. `events` keeps the connection
//! open and streams.

use std::path::Path;

use ct_netlink::{Tuple, TupleFilter};
use serde::{Deserialize, Serialize};

use crate::filter::Filter;

/// Where the agent listens unless `--socket` or `CTSCOPE_SOCKET` says otherwise.
pub const DEFAULT_SOCKET: &str = "/run/ctscope/agent.sock";

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

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
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
        by: crate::cli::TopBy,
        n: usize,
        json: bool,
    },
    /// `ctscope timeouts`: how long ended flows lived, one [`NsLifetimes`] line per
    /// namespace asked for.
    Lifetimes { netns: Vec<u32> },
    /// `ctscope stats`: counters, attribution and the unexplained remainder.
    Stats { scope: Scope, json: bool },
    /// `ctscope events`: the agent's event stream from now on.
    Events {
        filter: Filter,
        json: bool,
        timestamp: bool,
    },
    /// What the agent runs on and how it is doing (one JSON object).
    Status,
}

/// Parses one request line as the agent reads it.
pub fn parse_request(line: &str) -> Result<Request, String> {
    serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))
}

/// One namespace's lifetimes, as the `lifetimes` answer carries them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NsLifetimes {
    pub netns: u32,
    pub lifetimes: crate::lifetimes::Lifetimes,
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

/// The socket path a command uses: `--socket`, else `CTSCOPE_SOCKET`, else the default.
pub fn socket_path(flag: Option<&Path>) -> std::path::PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CTSCOPE_SOCKET").map(Into::into))
        .unwrap_or_else(|| DEFAULT_SOCKET.into())
}
