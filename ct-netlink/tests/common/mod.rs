//! Shared helpers for the root-only integration tests: throwaway network
//! namespaces, traffic inside them, and parsing of `conntrack` output.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{IpAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use ct_netlink::{Conntrack, Entry, Error};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why this machine cannot run the tests, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["ip", "nft", "conntrack"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!("`{tool}` not installed"));
        }
    }
    None
}

/// Print the skip line and return true when the test cannot run.
pub fn skip() -> bool {
    match skip_reason() {
        Some(reason) => skipped(&reason),
        None => false,
    }
}

/// Reports a test that cannot run. The stock harness would count it as passed, so where
/// every prerequisite is supposed to be installed (`cargo xtask test` sets
/// CTSCOPE_REQUIRE_ALL=1) a skip is a failure instead.
pub fn skipped(reason: &str) -> bool {
    if std::env::var_os("CTSCOPE_REQUIRE_ALL").is_some_and(|v| v == "1") {
        panic!("SKIPPED is not allowed here (CTSCOPE_REQUIRE_ALL=1): {reason}");
    }
    println!("SKIPPED: {reason}");
    true
}

/// A network namespace deleted on drop, even when the test panics.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// A fresh namespace with `lo` up and conntrack enabled by an nftables rule.
    pub fn new() -> NetNs {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("ctnl-test-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]));
        ns.sh("nft add table inet t; \
               nft add chain inet t c '{ type filter hook output priority 0; }'; \
               nft add rule inet t c ct state new counter");
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    pub fn open(&self) -> Conntrack {
        Conntrack::open_in_netns(self.path()).expect("open ctnetlink in test netns")
    }

    /// Run a shell command inside the namespace; panics on failure.
    pub fn sh(&self, script: &str) -> Output {
        run(Command::new("ip").args(["netns", "exec", &self.name, "sh", "-c", script]))
    }

    /// Run the real conntrack binary in the namespace; returns (exit code, stdout).
    pub fn conntrack(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "conntrack"])
            .args(args)
            .output()
            .expect("run conntrack");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Send one UDP datagram from each of `count` sockets to `dst:port`, from
    /// inside the namespace: `count` distinct conntrack entries.
    pub fn udp_flows(&self, dst: IpAddr, port: u16, count: usize) -> Vec<u16> {
        let path = self.path();
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            // SAFETY: setns reads the fd kept open by `ns`; this thread is ours
            // and ends right after, so no other code sees the namespace change.
            assert_eq!(
                unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            let bind: IpAddr = if dst.is_ipv4() {
                "127.0.0.1".parse().unwrap()
            } else {
                "::1".parse().unwrap()
            };
            let sockets: Vec<UdpSocket> = (0..count)
                .map(|_| UdpSocket::bind((bind, 0)).unwrap())
                .collect();
            for s in &sockets {
                s.send_to(b"ctscope", (dst, port)).unwrap();
            }
            sockets
                .iter()
                .map(|s| s.local_addr().unwrap().port())
                .collect()
        })
        .join()
        .unwrap()
    }
}

impl NetNs {
    /// Turn on per-direction packet/byte accounting for flows created from now on.
    pub fn enable_acct(&self) {
        self.sh("sysctl -qw net.netfilter.nf_conntrack_acct=1");
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A fresh namespace where ctnetlink works, or `None` after printing why the test
/// cannot run (the usual first line of a test).
pub fn netns_with_ctnetlink() -> Option<NetNs> {
    if skip() {
        return None;
    }
    let ns = NetNs::new();
    (!ctnetlink_missing(&ns)).then_some(ns)
}

/// Whether ctnetlink works at all here (prints SKIPPED otherwise).
pub fn ctnetlink_missing(ns: &NetNs) -> bool {
    match Conntrack::open_in_netns(ns.path()) {
        Err(Error::Unavailable { .. }) => skipped("nf_conntrack_netlink not available"),
        _ => false,
    }
}

/// Comparable fields of an entry (no timeout, no use count).
pub fn key_of_entry(e: &Entry) -> String {
    let t = |t: &ct_netlink::Tuple, c: Option<ct_netlink::Counters>| {
        format!(
            "{} {} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            t.src,
            t.dst,
            t.src_port,
            t.dst_port,
            t.icmp_type,
            t.icmp_code,
            t.icmp_id,
            c.map(|c| c.packets),
            c.map(|c| c.bytes)
        )
    };
    format!(
        "{} {} | {} | {} | unreplied={} assured={} mark={} zone={} id={:?} state={:?}",
        e.family.name(),
        e.proto,
        t(&e.orig, e.counters_orig),
        t(&e.reply, e.counters_reply),
        e.status.is_unreplied(),
        e.status.is_assured(),
        e.mark.unwrap_or(0),
        e.zone.unwrap_or(0),
        e.id,
        e.tcp
            .as_ref()
            .map(|t| t.state.name())
            .or(e.sctp.as_ref().map(|s| s.state.name()))
            .or(e.dccp.as_ref().map(|d| d.state.name())),
    )
}

#[derive(Default)]
struct ParsedTuple {
    src: String,
    dst: String,
    sport: Option<u16>,
    dport: Option<u16>,
    icmp_type: Option<u8>,
    icmp_code: Option<u8>,
    icmp_id: Option<u16>,
    packets: Option<u64>,
    bytes: Option<u64>,
}

/// Parse one `conntrack -L -o extended,id` line into the same key as
/// [`key_of_entry`].
pub fn key_of_line(line: &str) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let family = words[0];
    let proto: u8 = words[3].parse().expect("protocol number column");
    let mut tuples = [ParsedTuple::default(), ParsedTuple::default()];
    let mut dir: Option<usize> = None;
    let mut kv = BTreeMap::new();
    let (mut unreplied, mut assured, mut state) = (false, false, None);
    let mut trailer = false;
    let is_icmp = proto == 1 || proto == 58;
    for w in &words[4..] {
        match w.split_once('=') {
            None if *w == "[UNREPLIED]" => unreplied = true,
            None if *w == "[ASSURED]" => assured = true,
            None if !w.starts_with('[') && w.parse::<u32>().is_err() => state = Some(w.to_string()),
            None => {}
            Some(("src", v)) => {
                dir = Some(dir.map_or(0, |_| 1));
                tuples[dir.unwrap()].src = v.to_string();
            }
            Some((k @ ("mark" | "use" | "zone" | "secctx"), v)) => {
                trailer = true;
                kv.insert(k.to_string(), v.to_string());
            }
            Some((k, v)) if trailer => {
                kv.insert(k.to_string(), v.to_string());
            }
            // The entry id: conntrack -E prints it straight after the reply tuple.
            Some(("id", v)) if !is_icmp || dir.is_some_and(|d| tuples[d].icmp_id.is_some()) => {
                kv.insert("id".into(), v.to_string());
            }
            Some((k, v)) => {
                let t = &mut tuples[dir.expect("tuple starts with src=")];
                match k {
                    "dst" => t.dst = v.to_string(),
                    "sport" => t.sport = v.parse().ok(),
                    "dport" => t.dport = v.parse().ok(),
                    // GRE keys travel in the port attributes.
                    "srckey" => t.sport = u16::from_str_radix(v.trim_start_matches("0x"), 16).ok(),
                    "dstkey" => t.dport = u16::from_str_radix(v.trim_start_matches("0x"), 16).ok(),
                    "type" => t.icmp_type = v.parse().ok(),
                    "code" => t.icmp_code = v.parse().ok(),
                    "id" => t.icmp_id = v.parse().ok(),
                    "packets" => t.packets = v.parse().ok(),
                    "bytes" => t.bytes = v.parse().ok(),
                    _ => {}
                }
            }
        }
    }
    let t = |t: &ParsedTuple| {
        format!(
            "{} {} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            t.src, t.dst, t.sport, t.dport, t.icmp_type, t.icmp_code, t.icmp_id, t.packets, t.bytes
        )
    };
    format!(
        "{} {} | {} | {} | unreplied={} assured={} mark={} zone={} id={:?} state={:?}",
        family,
        proto,
        t(&tuples[0]),
        t(&tuples[1]),
        unreplied,
        assured,
        kv.get("mark").map_or("0", String::as_str),
        kv.get("zone").map_or("0", String::as_str),
        kv.get("id").and_then(|v| v.parse::<u32>().ok()),
        state,
    )
}

/// Sorted keys of `conntrack -L -o extended,id` in the namespace.
pub fn cli_keys(ns: &NetNs, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["-L", "-o", "extended,id"];
    args.extend_from_slice(extra);
    let (code, out) = ns.conntrack(&args);
    assert_eq!(code, 0, "conntrack -L failed");
    let mut keys: Vec<String> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(key_of_line)
        .collect();
    keys.sort();
    keys
}

/// Sorted keys of our entries.
pub fn lib_keys(entries: &[Entry]) -> Vec<String> {
    let mut keys: Vec<String> = entries.iter().map(key_of_entry).collect();
    keys.sort();
    keys
}
