//! What operators load from `deploy/` (issue 15): the Prometheus rules pass `promtool
//! check rules` and their own unit tests, which fire and leave quiet every alert; and
//! every query of the Grafana dashboard (panels and variables) returns data from a real
//! Prometheus scraping the agent after traffic that makes them exist (10.200.74.0/24): a
//! SNAT port clash, a table-full episode, a flush (destroys, lifetimes) and a burst that
//! overruns a small ring buffer (losses, a reseed).

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use ctscope_tests::{
    agent::Agent,
    grafana::{self, Query},
    kernel::{self, SysctlGuard},
    netns, nft,
    prometheus::{self, Prometheus},
    rules, traffic, wait,
};

use crate::common::{Ctx, UDP_PORT, Watch, note};

const SUBNET: u8 = 74;
const RULES: &str = "ctscope-rules.yml";
const RULE_TESTS: &str = "ctscope-rules.test.yml";
/// What the dashboard's interval variables become: a range that holds the whole run.
const RANGE: &str = "1m";

/// `deploy/` of the workspace under test.
fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .join("deploy")
}

pub fn alert_rules() {
    let dir = deploy_dir().join("prometheus");
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("running promtool");
        assert!(
            out.status.success(),
            "promtool {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(dir.join(RULES)).expect("reading the rules");
    let tests = std::fs::read_to_string(dir.join(RULE_TESTS)).expect("reading their tests");
    for alert in rules::alert_names(&rules) {
        let (fires, quiet) = rules::tested(&tests, &alert);
        assert!(
            fires && quiet,
            "{RULE_TESTS} must have a test where {alert} fires (has one: {fires}) and one \
             where it does not (has one: {quiet})"
        );
    }
}

pub fn dashboard_queries() {
    let path = deploy_dir().join("grafana/ctscope.json");
    let text = std::fs::read_to_string(&path).expect("reading the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    for panel in grafana::panels(&dashboard) {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {}: its data source must be the dashboard's variable",
            panel["title"]
        );
    }
    let queries = grafana::queries(&dashboard, RANGE).unwrap_or_else(|e| panic!("{e}"));

    let ctx = Ctx::new(Watch::KernelOnly, SUBNET, |p| {
        nft::apply(&p.c, &nft::snat_single_port(netns::C_IF, p.c_addr, 40000));
        p.c.sysctl("net.netfilter.nf_conntrack_udp_timeout", "600");
    });
    let addr: SocketAddr = format!("127.0.0.1:{}", prometheus::free_port())
        .parse()
        .unwrap();
    // A small ring (about 45 records) holds the few events of the episodes below, and
    // overflows in the burst after them.
    let metrics = addr.to_string();
    let agent = Agent::start(&[
        "--resync",
        "1",
        "--ring-size",
        "16384",
        "--metrics",
        &metrics,
    ]);
    let prom = Prometheus::start(addr);
    prom.wait_up();
    make_every_series(&ctx);

    variables_have_values(&prom, &dashboard);
    let mut empty: Vec<&Query> = Vec::new();
    let all_answered = wait::poll(Duration::from_secs(20), Duration::from_millis(500), || {
        empty = queries
            .iter()
            .filter(|q| prom.query(&q.expr).is_empty())
            .collect();
        empty.is_empty().then_some(())
    });
    let report: Vec<String> = empty
        .iter()
        .map(|q| format!("panel {:?} target {}: {}", q.panel, q.ref_id, q.expr))
        .collect();
    assert!(
        all_answered.is_some(),
        "queries of {} with no series (agent status {}):\n{}",
        path.display(),
        agent.status()["totals"],
        report.join("\n")
    );
    note(format!(
        "dashboard: {} queries answered; agent totals {}",
        queries.len(),
        agent.status()["totals"]
    ));
    agent.stop();
}

/// Every query variable of the dashboard has values: a broken one would empty every panel.
fn variables_have_values(prom: &Prometheus, dashboard: &serde_json::Value) {
    let queries = grafana::variable_queries(dashboard, RANGE).unwrap_or_else(|e| panic!("{e}"));
    for q in queries {
        let values = prom.label_values(&q.label, q.selector.as_deref());
        assert!(
            !values.is_empty(),
            "variable {:?}: no values of {} on {:?}",
            q.variable,
            q.label,
            q.selector
        );
    }
}

/// Traffic in the pair of `ctx` for every series the dashboard shows: an insert failure
/// (SNAT port clash), table-full drops, destroys and lifetimes (a flush), lost events.
fn make_every_series(ctx: &Ctx) {
    let p = &ctx.pair;
    let dns = SocketAddrV4::new(p.s_addr, 53);
    let udp = SocketAddrV4::new(p.s_addr, UDP_PORT);
    let _sinks = (
        traffic::UdpSink::bind(&p.s, dns),
        traffic::UdpSink::bind(&p.s, udp),
    );
    let clash = traffic::snat_clash(&p.c, p.c_addr, [32001, 32002], dns);
    assert!(
        traffic::is_eperm(&clash.second),
        "the clash's loser was not dropped: {clash:?}"
    );
    let ports = traffic::ports(32100, 20);
    let results = {
        // nf_conntrack_max is global: lowered for as short as possible.
        let _max = SysctlGuard::set("net.netfilter.nf_conntrack_max", 8);
        traffic::udp_flows(&p.c, p.c_addr, &ports, udp)
    };
    let dropped = traffic::dropped_ports(&ports, &results);
    assert!(
        !dropped.is_empty(),
        "no table-full drop with nf_conntrack_max=8"
    );
    kernel::ct_flush(&p.c);
    let (failed, took) = traffic::udp_spray(
        &p.c,
        SocketAddrV4::new(p.c_addr, 33000),
        p.s_addr,
        40000..45000,
    );
    assert_eq!(failed, 0, "sends of the burst failed");
    note(format!(
        "dashboard: {} table-full drops, 5000-flow burst in {took:?}",
        dropped.len()
    ));
}
