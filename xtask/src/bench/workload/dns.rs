//! `--workload dns`: dnsperf in a client namespace → dnsmasq in a server namespace that
//! answers a local zone from its own configuration (no upstream); conntrack runs in the
//! server's namespace, as on a DNS server behind a stateful firewall.
//!
//! dnsperf sends from one socket, and a resolver sees many clients, each query from a
//! port of its own: so the client's nft rewrites each query's source (statelessly, no
//! conntrack there) to the next of 254 addresses × 16381 ports (10.200.93.1-254,
//! 4.2 M pairs: no pair comes back within a run, so every query is a new entry) and
//! each answer's destination back to dnsperf's socket. 10.200.92.0/24 joins client
//! (.1) and server (.2); the server routes 10.200.93.0/24 back to the client.

use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use ctscope_tests::netns::Netns;

use crate::cmd;

use super::super::Sender;
use super::{count_created, daemon::Daemon, veth};

const CLIENT_ADDR: &str = "10.200.92.1";
const SERVER_ADDR: &str = "10.200.92.2";
/// The sources the queries are rewritten to: .1 to .254 of this /24.
const SOURCES_NET: &str = "10.200.93";
const SOURCES: u32 = 254;
/// Ports per address: a prime, hence coprime with [`SOURCES`], so that the two counters
/// (one per rewrite, both stepping once a query) go through every pair before repeating.
const PORTS: u32 = 16_381;
const FIRST_PORT: u32 = 1024;
/// dnsperf's socket (one client, so that answers can be steered back to it).
const DNSPERF_PORT: u16 = 5300;
/// Queries in flight at once: fewer than dnsmasq's socket buffer holds (~190 queries at
/// the default 208 KiB), or the excess is dropped there after conntrack made its entry,
/// and dnsperf waits 5 s for each.
const OUTSTANDING: u32 = 128;
const ZONE: &str = "bench.test";
/// The answer to every name in [`ZONE`] (TEST-NET-1).
const ANSWER: &str = "192.0.2.1";

pub(in super::super) struct Dns {
    // Declared first, dropped first: dnsmasq dies before its namespace goes.
    dnsmasq: Daemon,
    client: Netns,
    server: Netns,
    queries: std::path::PathBuf,
}

impl Dns {
    pub(super) fn new(dir: &Path) -> Result<Dns> {
        let (client, server) = (Netns::new(), Netns::new());
        veth(
            (&client, "bench0", CLIENT_ADDR),
            (&server, "bench1", SERVER_ADDR),
        )?;
        cmd::run(server.command("ip").args([
            "route",
            "add",
            &format!("{SOURCES_NET}.0/24"),
            "via",
            CLIENT_ADDR,
        ]))?;
        // A file: the maps are too long to echo as a command line.
        let rules = dir.join("dns-client.nft");
        fs::write(&rules, client_rules())
            .with_context(|| format!("writing {}", rules.display()))?;
        cmd::output(client.command("nft").arg("-f").arg(&rules))?;
        cmd::run(
            server
                .command("nft")
                .arg(format!("add table ip ctbench; {}", count_created("input"))),
        )?;
        let dnsmasq = start_dnsmasq(&server, dir)?;
        let queries = dir.join("dns-queries.txt");
        let names: String = (0..16).map(|i| format!("host{i}.{ZONE} A\n")).collect();
        fs::write(&queries, names).with_context(|| format!("writing {}", queries.display()))?;
        Ok(Dns {
            dnsmasq,
            client,
            server,
            queries,
        })
    }

    pub(super) fn conntrack_ns(&self) -> &Netns {
        &self.server
    }

    pub(super) fn drive(&self, seconds: u32, echo: bool) -> Result<Sender> {
        self.dnsmasq.check()?;
        let mut dnsperf = self.client.command("dnsperf");
        dnsperf
            .args(["-s", SERVER_ADDR, "-a", CLIENT_ADDR])
            .args(["-x", &DNSPERF_PORT.to_string(), "-c", "1", "-T", "1"])
            .args(["-q", &OUTSTANDING.to_string(), "-l", &seconds.to_string()])
            .arg("-d")
            .arg(&self.queries);
        if echo {
            eprintln!("$ {}", cmd::show(&dnsperf));
        }
        parse_dnsperf(&cmd::output(&mut dnsperf)?)
    }
}

pub(super) fn describe(seconds: u32) -> String {
    format!(
        "DNS: dnsperf (one socket, {OUTSTANDING} queries in flight, each rewritten to a \
         new source address and port) → dnsmasq (local zone, no upstream) behind \
         conntrack, {seconds} s per run, one flow per query"
    )
}

/// The client's stateless rewrites: queries out from the next source address and port,
/// answers back to dnsperf's socket. Priority raw: before anything else on both hooks.
fn client_rules() -> String {
    let mut addrs = String::new();
    for i in 0..SOURCES {
        let _ = write!(addrs, "{}{i} : {SOURCES_NET}.{}", sep(i), i + 1);
    }
    let mut ports = String::new();
    for i in 0..PORTS {
        let _ = write!(ports, "{}{i} : {}", sep(i), FIRST_PORT + i);
    }
    format!(
        "table ip ctbench {{\n\
         \x20 chain out {{\n\
         \x20   type filter hook output priority raw; policy accept;\n\
         \x20   ip daddr {SERVER_ADDR} udp dport 53 \
         ip saddr set numgen inc mod {SOURCES} map {{ {addrs} }} \
         udp sport set numgen inc mod {PORTS} map {{ {ports} }};\n\
         \x20 }}\n\
         \x20 chain pre {{\n\
         \x20   type filter hook prerouting priority raw; policy accept;\n\
         \x20   ip saddr {SERVER_ADDR} udp sport 53 \
         ip daddr set {CLIENT_ADDR} udp dport set {DNSPERF_PORT};\n\
         \x20 }}\n\
         }}\n"
    )
}

fn sep(i: u32) -> &'static str {
    if i == 0 { "" } else { ", " }
}

/// dnsmasq in `server`'s namespace with a configuration of its own: no upstream, no
/// /etc/hosts, every name of [`ZONE`] answered locally; in the foreground, as root (it
/// would otherwise switch to a user the system may not have), logging to stderr.
fn start_dnsmasq(server: &Netns, dir: &Path) -> Result<Daemon> {
    let conf = format!(
        "port=53\n\
         listen-address={SERVER_ADDR}\n\
         bind-interfaces\n\
         no-resolv\n\
         no-hosts\n\
         local=/{ZONE}/\n\
         address=/{ZONE}/{ANSWER}\n\
         user=root\n\
         pid-file=\n"
    );
    let path = dir.join("dnsmasq.conf");
    fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    let mut dnsmasq: Command = server.command("dnsmasq");
    dnsmasq
        .args(["--keep-in-foreground", "--log-facility=-"])
        .arg(format!("--conf-file={}", path.display()));
    Daemon::start(
        "dnsmasq",
        dnsmasq,
        &dir.join("dnsmasq.log"),
        server,
        'u',
        53,
    )
}

/// dnsperf's statistics: `Queries sent:`, `Queries lost:`, `Queries per second:`.
fn parse_dnsperf(out: &str) -> Result<Sender> {
    let field = |key: &str| -> Option<f64> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    let need =
        |key: &str| field(key).with_context(|| format!("no `{key}` in dnsperf's output: {out:?}"));
    let sent = need("Queries sent:")? as u64;
    let lost = need("Queries lost:")? as u64;
    let rate = need("Queries per second:")?;
    let seconds = need("Run time (s):")?;
    if sent == 0 || rate <= 0.0 {
        bail!("dnsperf got no answers: {out:?}");
    }
    Ok(Sender {
        flows: sent,
        sent,
        send_errors: lost,
        first_error: (lost > 0).then(|| format!("{lost} queries lost (no answer in 5 s)")),
        seconds,
        rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_queries_and_rate_from_dnsperf() {
        let out = "Statistics:

  Queries sent:         76120
  Queries completed:    76113 (99.99%)
  Queries lost:         7 (0.01%)

  Response codes:       NOERROR 76113 (100.00%)
  Average packet size:  request 30, response 46
  Run time (s):         3.007757
  Queries per second:   25305.568236
";
        let s = parse_dnsperf(out).unwrap();
        assert_eq!((s.sent, s.send_errors), (76120, 7));
        assert!((s.rate - 25305.568236).abs() < 1e-6);
        assert!((s.seconds - 3.007757).abs() < 1e-9);
        assert!(parse_dnsperf("Statistics:\n").is_err());
    }

    #[test]
    fn the_rewrite_goes_through_every_source_before_repeating() {
        // Two counters stepping together repeat after lcm(SOURCES, PORTS) queries.
        let gcd = |mut a: u32, mut b: u32| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        assert_eq!(gcd(SOURCES, PORTS), 1);
        let rules = client_rules();
        assert!(rules.contains("253 : 10.200.93.254 }"));
        let last = FIRST_PORT + PORTS - 1;
        assert!(last <= 65535);
        assert!(rules.contains(&format!("{} : {last} }}", PORTS - 1)));
    }
}
