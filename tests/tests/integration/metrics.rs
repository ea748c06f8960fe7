//! `ctscope watch --metrics` scraped every second by a real Prometheus (issue 15). After a
//! SNAT port clash and a table-full episode in one namespace (10.200.70.0/24), what
//! Prometheus stored, queried through its HTTP API, equals the kernel's own counters:
//! insert failures by cause, table-full drops, every `conntrack -S` counter, and
//! `conntrack -C` per namespace. Both wire formats parse (`promtool check metrics`, and
//! Prometheus itself scrapes OpenMetrics), and a namespace that vanishes takes its series
//! with it.

use std::{
    net::{SocketAddr, SocketAddrV4},
    time::{Duration, Instant},
};

use ctscope_tests::{
    agent::Agent,
    cmd,
    kernel::{CtStats, SysctlGuard},
    netns::{self, Netns},
    nft,
    prometheus::{self, Prometheus},
    traffic, wait,
};

use crate::common::{Ctx, UDP_PORT, Watch, event_wait, note};

const SUBNET: u8 = 70;
const SNAT_PORT: u16 = 40000;
/// nf_conntrack_max during the table-full episode, and the flows sent meanwhile.
const MAX: u64 = 8;
const FLOWS: usize = 20;

pub fn scraped() {
    let ctx = Ctx::new(Watch::KernelOnly, SUBNET, |p| {
        nft::apply(
            &p.c,
            &nft::snat_single_port(netns::C_IF, p.c_addr, SNAT_PORT),
        );
        // The entries must stay while their counts are compared.
        p.c.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600");
    });
    let p = &ctx.pair;
    let dns = SocketAddrV4::new(p.s_addr, 53);
    let _dns = traffic::UdpSink::bind(&p.s, dns);
    let udp = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let _sink = traffic::UdpSink::bind(&p.s, udp);

    let addr: SocketAddr = format!("127.0.0.1:{}", prometheus::free_port())
        .parse()
        .unwrap();
    let agent = Agent::start(&["--resync", "1", "--metrics", &addr.to_string()]);
    let prom = Prometheus::start(addr);
    prom.wait_up();
    check_formats(addr);

    let before = CtStats::read(&p.c);
    let clash = traffic::snat_clash(&p.c, p.c_addr, [31001, 31002], dns);
    assert!(
        traffic::is_eperm(&clash.second),
        "the clash's loser was not dropped: {clash:?}"
    );
    let ports = traffic::ports(31100, FLOWS);
    let results = {
        // nf_conntrack_max is global: keep the lowered value for as short as possible.
        let _max = SysctlGuard::set("net.netfilter.nf_conntrack_max", MAX);
        traffic::udp_flows(&p.c, p.c_addr, &ports, udp)
    };
    let after = CtStats::read(&p.c);
    let delta = after.since(&before);
    let failed = traffic::dropped_ports(&ports, &results);
    note(format!("metrics: kernel delta {delta}"));
    assert_eq!(delta.get("insert_failed"), 1, "{delta}");
    let drops = delta.get("drop");
    assert!(
        drops >= 2,
        "no table-full drop with nf_conntrack_max={MAX}: {delta}"
    );

    let ns = format!("netns=\"{}\"", ctx.inode);
    let q = |expr: String| prom.value(&expr);
    let nat_clash = format!("ctscope_insert_failed_total{{{ns},cause=\"nat_port_clash\"}}");
    let table_full = format!("ctscope_table_full_total{{{ns}}}");
    let kernel_drop = format!("ctscope_kernel_drop_total{{{ns}}}");
    let settled = wait::poll(event_wait(), Duration::from_millis(250), || {
        let caught_up = q(nat_clash.clone()) == Some(1.0)
            && q(table_full.clone()) == Some((drops - 1) as f64)
            && q(kernel_drop.clone()) == Some(after.get("drop") as f64);
        caught_up.then_some(())
    });
    assert!(
        settled.is_some(),
        "Prometheus has {nat_clash} = {:?}, {table_full} = {:?} (kernel drop delta {drops}), \
         {kernel_drop} = {:?}",
        q(nat_clash.clone()),
        q(table_full.clone()),
        q(kernel_drop.clone())
    );

    // What the events say, beside the kernel's deltas.
    assert_eq!(
        q(nat_clash.clone()),
        Some(delta.get("insert_failed") as f64),
        "insert failures by cause vs the kernel's insert_failed delta"
    );
    let unresolved = format!(
        "sum(ctscope_insert_failed_total{{{ns},cause=~\"nat_port_clash|same_flow_race\"}})"
    );
    assert_eq!(
        q(format!("sum({table_full}) + {unresolved}")),
        Some(drops as f64),
        "table_full plus unresolved clashes vs the kernel's drop delta ({delta})"
    );
    assert_eq!(
        q(format!("ctscope_early_drop_total{{{ns}}}")),
        Some(delta.get("early_drop") as f64),
        "early drops ({delta})"
    );
    for counter in ["insert_failed", "drop", "early_drop"] {
        assert_eq!(
            q(format!("ctscope_unexplained{{{ns},counter=\"{counter}\"}}")),
            Some(0.0),
            "unexplained {counter} ({delta})"
        );
    }
    let born = 1 + FLOWS - failed.len();
    assert_eq!(
        q(format!("ctscope_new_total{{{ns},proto=\"udp\"}}")),
        Some(born as f64),
        "UDP entries born: the clash's winner and the flows the full table let in"
    );

    // The kernel's own counters, every one `conntrack -S` prints, and `conntrack -C`.
    for (name, value) in &after.0 {
        let served = format!("ctscope_kernel_{name}_total{{{ns}}}");
        assert_eq!(
            q(served.clone()),
            Some(*value as f64),
            "{served} vs conntrack -S"
        );
    }
    for n in [&p.c, &p.s] {
        same_count(&prom, n);
    }
    let tier = agent.status()["tier"].to_string();
    assert_eq!(
        q(format!("ctscope_build_info{{tier=\"{tier}\"}}")),
        Some(1.0),
        "build_info at the agent's tier {tier}"
    );

    vanished_namespace_goes(&prom);
    agent.stop();
}

/// A text scrape passes `promtool check metrics`; an OpenMetrics one ends in `# EOF`;
/// other paths are 404. Notes the scrape's size and time.
fn check_formats(addr: SocketAddr) {
    let started = Instant::now();
    let text = prometheus::get(addr, "/metrics", None).expect("scraping the agent");
    let took = started.elapsed();
    assert_eq!(text.status, 200, "{text:?}");
    assert!(
        text.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        text.headers
    );
    let lint =
        cmd::output(&["promtool", "check", "metrics"], Some(&text.body)).expect("running promtool");
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}\non:\n{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr),
        text.body
    );
    note(format!(
        "metrics: text scrape {} bytes, {} lines, in {took:?}",
        text.body.len(),
        text.body.lines().count()
    ));

    let om = prometheus::get(addr, "/metrics", Some("application/openmetrics-text"))
        .expect("scraping the agent");
    assert!(
        om.headers["content-type"].starts_with("application/openmetrics-text"),
        "{:?}",
        om.headers
    );
    assert!(om.body.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");

    let other = prometheus::get(addr, "/", None).expect("asking the agent for /");
    assert_eq!(other.status, 404, "{other:?}");
    let health = prometheus::get(addr, "/healthz", None).expect("asking for /healthz");
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, "ok\n"),
        "{health:?}"
    );
}

/// `ctscope_conntrack_entries` of `ns` equals `conntrack -C` there.
fn same_count(prom: &Prometheus, ns: &Netns) {
    let served = format!("ctscope_conntrack_entries{{netns=\"{}\"}}", ns.inode());
    let mut last = (None, String::new());
    let same = wait::poll(Duration::from_secs(10), Duration::from_millis(250), || {
        let kernel = ns.exec(&["conntrack", "-C"]).trim().to_owned();
        last = (prom.value(&served), kernel.clone());
        (last.0 == kernel.parse::<f64>().ok()).then_some(())
    });
    assert!(
        same.is_some(),
        "{served} = {:?}, conntrack -C = {}",
        last.0,
        last.1
    );
}

/// A namespace the agent found is served, and its series go once it is deleted
/// (Prometheus marks them stale at the first scrape without them).
fn vanished_namespace_goes(prom: &Prometheus) {
    let extra = Netns::new();
    let series = format!("ctscope_conntrack_entries{{netns=\"{}\"}}", extra.inode());
    let limit = Duration::from_secs(20);
    let seen = wait::poll(limit, Duration::from_millis(250), || {
        prom.value(&series).is_some().then_some(())
    });
    assert!(seen.is_some(), "{series} not served within {limit:?}");
    drop(extra);
    let gone = wait::poll(limit, Duration::from_millis(250), || {
        prom.value(&series).is_none().then_some(())
    });
    assert!(
        gone.is_some(),
        "{series} still served {limit:?} after its namespace was deleted"
    );
}
