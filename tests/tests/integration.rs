//! ctscope integration scenarios in network namespaces, on the host and inside VMs.
//!
//! One libtest-mimic binary: `--test-threads 1`, name filters and the libtest summary
//! work as usual. A scenario this kernel cannot run is an *ignored* trial, announced as
//! `SKIPPED: <name>: <reason>` before the run, never a pass.
//!
//! Scenario trials need ctscope at tier 1 (kprobes); each has a `t2_<name>` twin that
//! runs the same scenario with `--tier 2` (tracepoints only, which is all the project
//! hosts allow), some a `t2p_<name>` twin at tier 2 with entries parsed in BPF
//! (`--parsed-records`), and a `kernel_<name>` twin that runs the traffic without ctscope and
//! checks only the kernel's counters, skipped as redundant wherever a ctscope tier runs.

#[path = "integration/agent.rs"]
mod agent;
#[path = "integration/agent_census.rs"]
mod agent_census;
#[path = "integration/agent_clients.rs"]
mod agent_clients;
#[path = "integration/agent_early_drop.rs"]
mod agent_early_drop;
#[path = "integration/agent_scale.rs"]
mod agent_scale;
#[path = "integration/agent_socket.rs"]
mod agent_socket;
#[path = "integration/clash_resolve.rs"]
mod clash_resolve;
#[path = "integration/cli_safety.rs"]
mod cli_safety;
#[path = "integration/common.rs"]
mod common;
#[path = "integration/conntrack_compat.rs"]
mod conntrack_compat;
#[path = "integration/containerd.rs"]
mod containerd;
#[path = "integration/ctnetlink_cli.rs"]
mod ctnetlink_cli;
#[path = "integration/ctnetlink_delete.rs"]
mod ctnetlink_delete;
#[path = "integration/deploy.rs"]
mod deploy;
#[path = "integration/destroy_reasons.rs"]
mod destroy_reasons;
#[path = "integration/diagnose.rs"]
mod diagnose;
#[path = "integration/dual_stack.rs"]
mod dual_stack;
#[path = "integration/early_drop.rs"]
mod early_drop;
#[path = "integration/flood.rs"]
mod flood;
#[path = "integration/host_tier.rs"]
mod host_tier;
#[path = "integration/least_privilege.rs"]
mod least_privilege;
#[path = "integration/metrics.rs"]
mod metrics;
#[path = "integration/monitoring.rs"]
mod monitoring;
#[path = "integration/node_exporter.rs"]
mod node_exporter;
#[path = "integration/privileges.rs"]
mod privileges;
#[path = "integration/server_side.rs"]
mod server_side;
#[path = "integration/snat_port_clash.rs"]
mod snat_port_clash;
#[path = "integration/table_full.rs"]
mod table_full;
#[path = "integration/tier3.rs"]
mod tier3;
#[path = "integration/timeouts.rs"]
mod timeouts;
#[path = "integration/udp_tcp_flows.rs"]
mod udp_tcp_flows;
#[path = "integration/workload.rs"]
mod workload;

use common::{Env, Needs, Watch};
use libtest_mimic::{Arguments, Failed, Trial};

/// A scenario that runs with ctscope watching, or kernel-only.
type Scenario = fn(Watch);

const SCENARIOS: &[(&str, Scenario)] = &[
    ("udp_tcp_flows", udp_tcp_flows::run),
    ("server_side", server_side::run),
    ("snat_port_clash", snat_port_clash::run),
    ("table_full", table_full::run),
    ("ctnetlink_delete", ctnetlink_delete::run),
    ("early_drop", early_drop::run),
    ("flood", flood::run),
    ("tcp_close", destroy_reasons::tcp_close),
    ("netns_exit", destroy_reasons::netns_exit),
    ("clash_resolve", clash_resolve::merged),
    ("clash_resolve_dnat", clash_resolve::dnat),
    // IPv6 twins (issue 16): the same assertions with IPv6 tuples.
    ("udp_tcp_flows_v6", udp_tcp_flows::run6),
    ("clash_resolve_v6", clash_resolve::merged6),
    ("clash_resolve_dnat_v6", clash_resolve::dnat6),
    ("snat_port_clash_v6", snat_port_clash::run6),
    ("table_full_v6", table_full::run6),
    ("early_drop_v6", early_drop::run6),
    ("server_side_v6", server_side::run6),
];

/// Scenarios that also run as `kp_<name>`: tier 1 kept on kprobes (`CTSCOPE_NO_FENTRY=1`),
/// the fallback for kernels that refuse fentry. Between them they use every kprobe and
/// kretprobe of the plan: confirm, clash, alloc and early_drop, delete and free; `flood`
/// prints its send rate next to the fentry run's, in the same VM.
const KPROBE_SCENARIOS: &[&str] = &[
    "udp_tcp_flows",
    "snat_port_clash",
    "table_full",
    "flood",
    // IPv6 through the same kprobes (the short ones).
    "snat_port_clash_v6",
    "table_full_v6",
];

/// Scenarios that also run as `t2p_<name>`: tier 2 with `--parsed-records`, the path
/// kernels take whose `struct nf_conn` does not fit a raw record. Together they cover
/// every tier-2 event: new, destroy with its reasons, insert_failed, table_full and
/// clashes.
const PARSED_SCENARIOS: &[&str] = &[
    "udp_tcp_flows",
    "server_side",
    "snat_port_clash",
    "table_full",
    "tcp_close",
    "clash_resolve",
    "clash_resolve_dnat",
    // IPv6 entries parsed in BPF: new, insert_failed, table_full and merges.
    "snat_port_clash_v6",
    "table_full_v6",
    "clash_resolve_v6",
];

/// Trials that run once, with what each needs: probing, the ctnetlink commands against
/// conntrack(8), bad input, closed pipes and missing privileges (issue 20), diagnosis,
/// and the agent's socket under bad input (at tier 3: no BPF). `cli_events_watching`
/// runs `events`, and `agent_metrics` the agent, at whatever tier this kernel allows;
/// `alert_rules` needs only promtool, and `dashboard_queries` the agent and Prometheus.
const ONCE: &[(&str, Needs, fn())] = &[
    ("host_tier", Needs::Root, host_tier::run),
    ("events_tier3", Needs::Root, tier3::run),
    ("events_tier3_overrun", Needs::Root, tier3::overrun),
    ("agent_tier3_live", Needs::Root, agent::tier3_live),
    ("ctnetlink_cli_list", Needs::Root, ctnetlink_cli::list),
    (
        "ctnetlink_cli_count_stats",
        Needs::Root,
        ctnetlink_cli::count_and_stats,
    ),
    (
        "ctnetlink_cli_delete_flush",
        Needs::Root,
        ctnetlink_cli::delete_and_flush,
    ),
    ("ctnetlink_cli_errors", Needs::Root, ctnetlink_cli::errors),
    ("conntrack_compat", Needs::Root, conntrack_compat::run),
    (
        "cli_out_of_range_values",
        Needs::Root,
        cli_safety::out_of_range_values,
    ),
    ("cli_closed_stdout", Needs::Root, cli_safety::closed_stdout),
    (
        "ctnetlink_cli_insert_checks",
        Needs::Root,
        cli_safety::insert_checks,
    ),
    (
        "cli_probe_unprivileged",
        Needs::Root,
        cli_safety::probe_unprivileged,
    ),
    (
        "cli_events_watching",
        Needs::Root,
        cli_safety::events_watching,
    ),
    ("capabilities", Needs::Setpriv, privileges::capabilities),
    (
        "capabilities_tier2",
        Needs::Tier2Setpriv,
        privileges::capabilities_tier2,
    ),
    ("netns_forms", Needs::Root, privileges::netns_forms),
    ("diagnose_table_full", Needs::Root, diagnose::table_full),
    ("diagnose_snat_clash", Needs::Root, diagnose::snat_clash),
    ("diagnose_top_dport", Needs::Root, diagnose::top_dport),
    ("dual_stack", Needs::Root, dual_stack::run),
    ("timeouts", Needs::Root, timeouts::run),
    ("workload_names", Needs::Root, workload::run),
    ("workload_pod_names", Needs::Containerd, workload::pod_names),
    ("agent_socket_path", Needs::Root, agent_socket::socket_path),
    ("agent_protocol", Needs::Root, agent_socket::protocol),
    (
        "agent_client_bounds",
        Needs::Root,
        agent_clients::client_bounds,
    ),
    (
        "agent_list_nonblocking",
        Needs::Root,
        agent_scale::list_does_not_block,
    ),
    (
        "agent_client_timeout",
        Needs::Root,
        agent_scale::client_timeout,
    ),
    ("events_stalled_reader", Needs::Tier2, flood::stalled_reader),
    (
        "agent_census",
        Needs::Root,
        agent_census::agrees_with_the_dump,
    ),
    ("agent_metrics", Needs::Tier2Prometheus, metrics::scraped),
    ("alert_rules", Needs::Promtool, monitoring::alert_rules),
    (
        "dashboard_queries",
        Needs::Tier2Prometheus,
        monitoring::dashboard_queries,
    ),
    ("least_privilege", Needs::Tier2Setpriv, least_privilege::run),
    (
        "deploy_manifests",
        Needs::KubernetesValidate,
        deploy::manifests,
    ),
    (
        "deploy_systemd_unit",
        Needs::SystemdAnalyze,
        deploy::systemd_unit,
    ),
    (
        "node_exporter_side_by_side",
        Needs::NodeExporter,
        node_exporter::side_by_side,
    ),
];

/// The agent (`ctscope watch`), given its tier flags.
type AgentScenario = fn(&'static [&'static str]);

const AGENT: &[(&str, AgentScenario)] = &[
    ("agent_mirror", agent::mirror),
    ("agent_dual_stack", agent::dual_stack),
    ("agent_recreate", agent::recreate),
    (
        "agent_recreate_early_drop",
        agent_early_drop::recreate_early_drop,
    ),
    ("agent_attribution", agent::attribution),
    ("agent_overflow", agent::overflow),
    ("agent_lifetimes", agent::lifetimes),
    ("agent_slow_subscribers", agent_clients::slow_subscribers),
];

fn main() {
    let args = Arguments::from_args();
    let env = Env::detect();
    env.describe();
    let mut trials = Trials::default();
    for &(name, needs, body) in ONCE {
        trials.add(&env, name, needs, body);
    }
    for &(name, scenario) in AGENT {
        trials.add(&env, name, Needs::Tier1, move || scenario(&[]));
        trials.add(&env, &format!("t2_{name}"), Needs::Tier2, move || {
            scenario(&["--tier", "2"])
        });
    }
    let watched = env.unmet(Needs::Tier1).is_none() || env.unmet(Needs::Tier2).is_none();
    for &(name, scenario) in SCENARIOS {
        trials.add(&env, name, Needs::Tier1, move || scenario(Watch::Ctscope));
        if KPROBE_SCENARIOS.contains(&name) {
            trials.add(&env, &format!("kp_{name}"), Needs::Tier1, move || {
                scenario(Watch::Kprobes)
            });
        }
        trials.add(&env, &format!("t2_{name}"), Needs::Tier2, move || {
            scenario(Watch::Tier2)
        });
        if PARSED_SCENARIOS.contains(&name) {
            trials.add(&env, &format!("t2p_{name}"), Needs::Tier2, move || {
                scenario(Watch::Tier2Parsed)
            });
        }
        let twin_needs = if watched {
            Needs::Redundant(name)
        } else {
            Needs::Root
        };
        trials.add(&env, &format!("kernel_{name}"), twin_needs, move || {
            scenario(Watch::KernelOnly)
        });
    }
    trials.announce_skips(&args);
    libtest_mimic::run(&args, trials.list).exit();
}

/// The trials, and why each ignored one cannot run here.
#[derive(Default)]
struct Trials {
    list: Vec<Trial>,
    skipped: Vec<(String, String)>,
}

impl Trials {
    /// Adds a trial that runs `body`, or an ignored one when `needs` is not met here.
    fn add(&mut self, env: &Env, name: &str, needs: Needs, body: impl FnOnce() + Send + 'static) {
        let trial = match (env.unmet(needs), env.required(needs)) {
            (None, _) => Trial::test(name, move || {
                body();
                Ok(())
            }),
            (Some(reason), Some(tier)) => Trial::test(name, move || {
                Err(Failed::from(format!(
                    "must run on this kernel ({}={tier}), but cannot: {reason}",
                    common::REQUIRE_TIER_ENV
                )))
            }),
            (Some(reason), None) => {
                self.skipped.push((name.to_owned(), reason.clone()));
                // Run anyway (--ignored) it fails with the reason: a skip is never a pass.
                Trial::test(name, move || {
                    Err(Failed::from(format!("skipped: {reason}")))
                })
                .with_ignored_flag(true)
            }
        };
        self.list.push(trial);
    }

    /// Prints `SKIPPED: <name>: <reason>` for every ignored trial the filters select.
    fn announce_skips(&self, args: &Arguments) {
        for (name, reason) in &self.skipped {
            let selected = match &args.filter {
                Some(f) if args.exact => name == f,
                Some(f) => name.contains(f.as_str()),
                None => true,
            };
            let excluded = args.skip.iter().any(|s| name.contains(s.as_str()));
            if selected && !excluded && !args.list {
                println!("SKIPPED: {name}: {reason}");
            }
        }
    }
}
