//! `ctscope probe`: needs no capability; without some it reports less, and says which.

use crate::{
    bpf::probe,
    cli::ProbeArgs,
    sys::caps::{self, Cap, Caps},
    sys::stdout,
};

pub fn run(args: &ProbeArgs) -> anyhow::Result<()> {
    warn_missing_caps();
    let report = probe::run();
    if args.json {
        stdout::line(serde_json::to_string(&report)?)
    } else {
        stdout::print(probe::text(&report))
    }
}

/// What the report cannot show for lack of a capability.
fn warn_missing_caps() {
    let bpf = Caps::current().missing(&[Cap::Bpf, Cap::Perfmon]);
    if !bpf.is_empty() {
        eprintln!(
            "ctscope: warning: without {}, tiers 1 and 2 cannot be tried: they show as \
             unavailable",
            caps::names(&bpf)
        );
    }
    caps::warn_without(
        Cap::NetAdmin,
        "ctnetlink cannot be tried: tier 3 shows as unavailable",
    );
    caps::warn_without(
        Cap::SysAdmin,
        "other network namespaces cannot be entered: their entry counts are missing",
    );
}
