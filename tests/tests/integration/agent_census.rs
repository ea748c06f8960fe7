//! `diagnose` and `timeouts` from the agent's table: with an agent running they count its
//! rows (the `census` request) instead of dumping the table, say so, and agree with
//! `--no-agent`'s dump of the same table.

use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddrV4,
    process::Output,
    time::{Duration, Instant},
};

use ctscope_tests::{
    agent::Agent,
    netns::Netns,
    traffic::{self, TcpCloser},
    wait,
};
use serde_json::Value;

use crate::{
    common::{TCP_PORT, UDP_PORT, big_udp_table, note},
    ctnetlink_cli::run_ctscope,
};

/// The client namespace's subnet (10.200.N.0/24).
const SUBNET: u8 = 86;
/// Unanswered UDP entries made before the agent starts (its seed dump has them).
const TABLE: u16 = 20_000;
/// TCP connections the server closes first: TIME_WAIT entries.
const TIME_WAIT: usize = 5;
/// UDP flows answered once (REPLIED), and flows to port 53 (DNS).
const ANSWERED: usize = 4;
const DNS: usize = 6;
/// UDP flows made once the agent runs: rows from its events, not its dump.
const LATE: usize = 300;

/// What the CLI says on stderr when the table figures are the agent's.
const FROM_AGENT: &str = "table figures from the agent's table";

pub fn agrees_with_the_dump() {
    let (ctx, _sink, max) = big_udp_table(SUBNET, TABLE);
    let p = &ctx.pair;
    let closer = TcpCloser::start(&p.s, SocketAddrV4::new(p.s_addr, TCP_PORT));
    traffic::tcp_connections(&p.c, SocketAddrV4::new(p.s_addr, TCP_PORT), TIME_WAIT);
    settled_in_time_wait(&p.c);
    let echo = SocketAddrV4::new(p.s_addr, UDP_PORT + 1);
    let answered = traffic::ports(27000, ANSWERED);
    traffic::udp_answered_flows(&p.c, &p.s, p.c_addr, &answered, echo);
    let dns = SocketAddrV4::new(p.s_addr, 53);
    traffic::udp_flows(&p.c, p.c_addr, &traffic::ports(28000, DNS), dns);

    // Tier 3 takes ctnetlink events of its own namespace only: the agent runs in `c`.
    let agent = Agent::start_in(p.c.name(), &["--tier", "3", "--resync", "3600"]);
    let sink = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let late = traffic::udp_flows(&p.c, p.c_addr, &traffic::ports(30000, LATE), sink);
    assert!(late.iter().all(Result::is_ok), "late flows: {late:?}");
    let entries = caught_up(&agent, &p.c, ctx.inode);
    assert!(entries >= u64::from(max) + LATE as u64, "{entries} entries");

    let name = p.c.name();
    let asked = Instant::now();
    let agents = [
        agent.ctscope(&["timeouts", "--json", "--netns", name]),
        agent.ctscope(&["diagnose", "--json", "--netns", name]),
    ];
    let took = asked.elapsed();
    let dumped = [
        plain(&["timeouts", "--json", "--no-agent", "--netns", name]),
        plain(&["diagnose", "--json", "--no-agent", "--netns", name]),
    ];
    let apart = asked.elapsed().as_secs_f64();
    for (from_agent, from_dump) in agents.iter().zip(&dumped) {
        let said = String::from_utf8_lossy(&from_agent.stderr);
        assert!(said.contains(FROM_AGENT), "stderr from the agent: {said}");
        let said = String::from_utf8_lossy(&from_dump.stderr);
        assert!(!said.contains(FROM_AGENT), "stderr with --no-agent: {said}");
    }
    let [timeouts, diagnose] = agents.map(|o| json(&o));
    let [timeouts_dump, diagnose_dump] = dumped.map(|o| json(&o));
    same_timeouts(&timeouts, &timeouts_dump, apart);
    same_diagnosis(&diagnose, &diagnose_dump);
    assert_eq!(timeouts["dumped"], entries, "{timeouts}");
    raw_census(&agent, ctx.inode, entries);
    note(format!(
        "agent_census: {entries} entries; timeouts and diagnose from the agent in {took:?}"
    ));
    agent.stop();
    closer.stop();
}

/// Waits until the closed connections' last ACKs have put every TCP entry in TIME_WAIT,
/// so the agent's seed dump and the later dump see one state.
fn settled_in_time_wait(c: &Netns) {
    let listing = || c.exec(&["conntrack", "-L", "-p", "tcp", "--state", "TIME_WAIT"]);
    let done = wait::poll(Duration::from_secs(10), Duration::from_millis(50), || {
        (listing().lines().count() == TIME_WAIT).then_some(())
    });
    assert!(
        done.is_some(),
        "TCP entries not all in TIME_WAIT:\n{}",
        listing()
    );
}

/// Waits until the agent holds as many rows of the namespace as the kernel has entries
/// (the late flows' events taken in); that count.
fn caught_up(agent: &Agent, c: &Netns, inode: u64) -> u64 {
    let mut last = (0, 0);
    let done = wait::poll(Duration::from_secs(30), Duration::from_millis(200), || {
        let kernel: u64 = c.exec(&["conntrack", "-C"]).trim().parse().unwrap_or(0);
        let rows = agent.status()["per_netns"][inode.to_string()]
            .as_u64()
            .unwrap_or(0);
        last = (kernel, rows);
        (kernel == rows && rows > 0).then_some(rows)
    });
    done.unwrap_or_else(|| panic!("kernel and agent entries (kernel, agent): {last:?}"))
}

/// `ctscope ARGS` without an agent, required to exit 0.
fn plain(args: &[&str]) -> Output {
    let out = run_ctscope(args);
    assert!(out.status.success(), "ctscope {args:?}: {out:?}");
    out
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {out:?}"))
}

/// The same rows, counts, sysctls and findings; seconds left within the seconds between
/// the two reads (and one for rounding).
fn same_timeouts(agent: &Value, dump: &Value, apart: f64) {
    for field in ["netns", "dumped", "sysctls", "findings"] {
        assert_eq!(agent[field], dump[field], "{field}: {agent} vs {dump}");
    }
    let rows = |v: &Value| v["table"].as_array().cloned().unwrap_or_default();
    let (ours, theirs) = (rows(agent), rows(dump));
    let keys = |rows: &[Value]| -> Vec<String> {
        let name = |r: &Value, k: &str| r[k].as_str().unwrap_or_default().to_owned();
        let key = |r: &Value| format!("{}/{}", name(r, "proto"), name(r, "state"));
        rows.iter().map(key).collect()
    };
    assert_eq!(keys(&ours), keys(&theirs), "{agent} vs {dump}");
    assert_eq!(
        keys(&ours),
        ["tcp/TIME_WAIT", "udp/REPLIED", "udp/UNREPLIED"],
        "{agent}"
    );
    let slack = apart + 1.0;
    for (a, d) in ours.iter().zip(&theirs) {
        for field in ["entries", "sysctl", "timeout"] {
            assert_eq!(a[field], d[field], "{field}: {a} vs {d}");
        }
        let (a, d) = (&a["remaining"], &d["remaining"]);
        assert_eq!(a["count"], d["count"], "{a} vs {d}");
        let count = a["count"].as_f64().unwrap_or(0.0);
        for (field, tolerance) in [("min", slack), ("max", slack), ("sum", slack * count)] {
            let (x, y) = (a[field].as_f64().unwrap(), d[field].as_f64().unwrap());
            assert!(
                (x - y).abs() <= tolerance,
                "seconds left, {field}: {x} from the agent, {y} dumped {apart:.1} s later"
            );
        }
    }
}

/// The same composition of the table, entries and findings.
fn same_diagnosis(agent: &Value, dump: &Value) {
    let (a, d) = (&agent["evidence"][0], &dump["evidence"][0]);
    for field in ["netns", "table", "entries", "sysctls"] {
        assert_eq!(a[field], d[field], "{field}: {a} vs {d}");
    }
    let table = &a["table"];
    assert_eq!(table["by_proto"]["tcp"], TIME_WAIT, "{table}");
    assert_eq!(table["tcp_states"]["TIME_WAIT"], TIME_WAIT, "{table}");
    assert_eq!(table["dns_udp"], DNS, "{table}");
    let ids = |v: &Value| -> Vec<(Value, Value)> {
        let findings = v["findings"].as_array().cloned().unwrap_or_default();
        findings
            .iter()
            .map(|f| (f["id"].clone(), f["severity"].clone()))
            .collect()
    };
    assert_eq!(ids(agent), ids(dump), "{agent} vs {dump}");
}

/// The raw request: one line per namespace asked for, `null` for one the agent does not
/// know (inode 1: none has it).
fn raw_census(agent: &Agent, inode: u64, entries: u64) {
    let line = format!("{{\"op\":\"census\",\"netns\":[{inode},1]}}\n");
    let stream = agent.connect(line.as_bytes());
    let lines: Vec<Value> = BufReader::new(stream)
        .lines()
        .map(|l| serde_json::from_str(&l.expect("a line")).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 3, "header and two namespaces: {lines:?}");
    assert_eq!(lines[0]["ok"], true, "{lines:?}");
    assert_eq!(lines[1]["netns"], inode);
    assert_eq!(lines[1]["census"]["composition"]["dumped"], entries);
    assert_eq!(lines[2]["netns"], 1);
    assert!(lines[2]["census"].is_null(), "{lines:?}");
}
