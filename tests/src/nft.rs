//! nftables rulesets applied inside a namespace (`ip netns exec NS nft -f -`).

use std::net::IpAddr;

use crate::netns::Netns;

/// Makes conntrack track every locally generated packet in the namespace: conntrack only
/// runs where some rule, NAT or ctnetlink user needs it.
pub const CT_ENABLE: &str = "table inet ctst_ct {
    chain out {
        type filter hook output priority 0;
        ct state new counter
    }
}
";

/// Source NAT of every UDP packet to port 53 leaving `oifname` to the single `to:port`:
/// the second concurrent flow cannot get a unique tuple, so its confirm clashes in the
/// reply direction (DESIGN.md's insert_failed reproducer). An IPv6 `to` makes it ip6 NAT.
pub fn snat_single_port(oifname: &str, to: impl Into<IpAddr>, port: u16) -> String {
    let (family, to) = match to.into() {
        IpAddr::V4(a) => ("ip", a.to_string()),
        IpAddr::V6(a) => ("ip6", format!("[{a}]")),
    };
    format!(
        "table {family} ctst_nat {{
    chain post {{
        type nat hook postrouting priority 100;
        oifname \"{oifname}\" udp dport 53 snat to {to}:{port}
    }}
}}
"
    )
}

/// Applies `ruleset` in `ns`.
pub fn apply(ns: &Netns, ruleset: &str) {
    ns.exec_with_input(&["nft", "-f", "-"], ruleset);
}

/// `nft list ruleset` in `ns`, for failure messages.
pub fn list(ns: &Netns) -> String {
    ns.exec(&["nft", "list", "ruleset"])
}
