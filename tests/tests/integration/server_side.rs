//! The server's side of a connection: conntrack runs in the server namespace only, so
//! every entry there is made by an inbound packet and the first packet of it to leave is
//! the server's answer (reply direction) or an ICMP error about it (related). Tier 2 sees
//! an entry first on egress, so this is the path its `new` takes for servers: N answered
//! UDP flows, N accepted TCP connections and N datagrams to a closed port (answered with
//! ICMP port unreachable) give exactly N `new` events each, with the client's tuples.
//! The IPv6 twin ([`run6`]) does the same over IPv6 (ICMPv6 port unreachable).

use std::{collections::BTreeSet, net::SocketAddr};

use ctscope_tests::{
    events::{self, Tuple},
    kernel,
    netns::Family,
    traffic,
};
use serde_json::Value;

use crate::common::{Ctx, TCP_PORT, UDP_PORT, Watch, event_wait};

const FLOWS: usize = 10;
/// Nothing listens here in the server: each datagram gets ICMP port unreachable.
const CLOSED_PORT: u16 = 5399;

pub fn run(watch: Watch) {
    serve(watch, Family::V4, 9);
}

/// The IPv6 twin, on fd00:200:109::/64.
pub fn run6(watch: Watch) {
    serve(watch, Family::V6, 109);
}

fn serve(watch: Watch, family: Family, subnet: u8) {
    let mut ctx = Ctx::server(watch, family, subnet, |p| {
        // The server answers every datagram to the closed port (no per-peer ICMP limit).
        let key = match p.family {
            Family::V4 => "net.ipv4.icmp_ratelimit",
            Family::V6 => "net.ipv6.icmp.ratelimit",
        };
        p.s.sysctl(key, "0");
    });
    let p = &ctx.pair;
    let (c_addr, s_addr) = (p.c_ip(), p.s_ip());
    let udp_ports = traffic::ports(21000, FLOWS);
    let udp_dst = SocketAddr::new(s_addr, UDP_PORT);
    traffic::udp_answered_flows(&p.c, &p.s, c_addr, &udp_ports, udp_dst);

    let server = traffic::TcpCloser::start(&p.s, SocketAddr::new(s_addr, TCP_PORT));
    let tcp_ports = traffic::tcp_connections(&p.c, SocketAddr::new(s_addr, TCP_PORT), FLOWS);
    assert_eq!(server.stop(), FLOWS, "connections the server accepted");

    let closed_ports = traffic::ports(22000, FLOWS);
    let closed_dst = SocketAddr::new(s_addr, CLOSED_PORT);
    for (port, r) in
        closed_ports
            .iter()
            .zip(traffic::udp_flows(&p.c, c_addr, &closed_ports, closed_dst))
    {
        r.unwrap_or_else(|e| panic!("UDP to the closed port from {port}: {e}"));
    }

    let tuples = |ports: &[u16], dport| -> BTreeSet<Tuple> {
        ports
            .iter()
            .map(|&sp| Tuple::new(c_addr, sp, s_addr, dport))
            .collect()
    };
    let want_udp: BTreeSet<Tuple> = tuples(&udp_ports, UDP_PORT)
        .into_iter()
        .chain(tuples(&closed_ports, CLOSED_PORT))
        .collect();
    let want_tcp = tuples(&tcp_ports, TCP_PORT);
    assert_eq!(
        want_tcp.len(),
        FLOWS,
        "TCP source ports repeat: {tcp_ports:?}"
    );
    let entries = kernel::ct_count(&p.s);
    assert!(
        entries >= (3 * FLOWS) as u64,
        "the server's table holds {entries} entries, expected at least {}",
        3 * FLOWS
    );

    let inode = ctx.inode;
    ctx.wait_events(event_wait(), |ev| {
        Ctx::count(ev, "new", inode, Some("udp")) >= want_udp.len()
            && Ctx::count(ev, "new", inode, Some("tcp")) >= want_tcp.len()
    });
    let Some(evs) = ctx.finish() else { return };
    check_new(&evs, inode, "udp", &want_udp);
    check_new(&evs, inode, "tcp", &want_tcp);
}

/// Exactly one `new` per flow, with the client's tuple as the original (no NAT).
fn check_new(evs: &[Value], inode: u64, proto: &str, want: &BTreeSet<Tuple>) {
    let news = events::select(evs, "new", inode, Some(proto));
    let got: BTreeSet<Tuple> = news.iter().map(|e| Tuple::of(e, "orig")).collect();
    assert_eq!(
        (news.len(), &got),
        (want.len(), want),
        "{proto} `new` events in the server namespace (count, orig tuples):\n{}",
        events::sample(&news)
    );
    for e in &news {
        assert_eq!(
            Tuple::of(e, "reply"),
            Tuple::of(e, "orig").reversed(),
            "reply tuple: {e}"
        );
    }
}
