//! create / update / delete / flush, checked against the real conntrack binary.

mod common;

use std::net::IpAddr;

use common::{cli_keys, key_of_entry, lib_keys};
use ct_netlink::{
    Error, Family, NatRange, NewEntry, Status, TcpState, Tuple, TupleFilter, Update, proto,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn udp(sport: u16, dport: u16) -> Tuple {
    Tuple::ports(proto::UDP, ip("127.0.0.1"), ip("127.0.0.2"), sport, dport)
}

#[tokio::test]
async fn create_shows_in_conntrack_list() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    let mut ct = ns.open();
    let tcp = Tuple::ports(proto::TCP, ip("127.0.0.1"), ip("127.0.0.2"), 1111, 80);
    let mut new = NewEntry::new(tcp.clone(), 120);
    new.tcp_state = Some(TcpState::from_name("ESTABLISHED").unwrap());
    new.status = Some(Status::SEEN_REPLY | Status::ASSURED);
    new.mark = Some(42);
    ct.create(&new).await.unwrap();
    let icmp6 = Tuple::icmp(ip("::1"), ip("::2"), 128, 0, 77);
    ct.create(&NewEntry::new(icmp6.clone(), 30)).await.unwrap();
    ct.create(&NewEntry::new(udp(5, 6), 30)).await.unwrap();

    let ours = ct.dump(None).await.unwrap();
    assert_eq!(ours.len(), 3);
    assert_eq!(lib_keys(&ours), cli_keys(&ns, &[]));
    let e = ct.get(&tcp, None).await.unwrap().unwrap();
    assert_eq!(e.mark, Some(42));
    assert!(e.status.is_assured());
    assert_eq!(e.tcp.as_ref().unwrap().state.name(), "ESTABLISHED");
    assert!(e.timeout.unwrap() <= 120 && e.timeout.unwrap() > 100);

    // Creating it again: EEXIST, as conntrack -I on the same tuple (exit 1).
    let err = ct.create(&new).await.unwrap_err();
    assert!(matches!(err, Error::Exists { .. }), "{err}");
    let (code, _) = ns.conntrack(&[
        "-I",
        "-p",
        "tcp",
        "-s",
        "127.0.0.1",
        "-d",
        "127.0.0.2",
        "--sport",
        "1111",
        "--dport",
        "80",
        "--state",
        "ESTABLISHED",
        "-t",
        "100",
    ]);
    assert_eq!(code, 1);

    // And an entry inserted by conntrack -I is seen by us the same way.
    let (code, _) = ns.conntrack(&[
        "-I",
        "-p",
        "udp",
        "-s",
        "127.0.0.9",
        "-d",
        "127.0.0.8",
        "--sport",
        "9",
        "--dport",
        "8",
        "-t",
        "50",
        "-m",
        "3",
    ]);
    assert_eq!(code, 0);
    let theirs = Tuple::ports(proto::UDP, ip("127.0.0.9"), ip("127.0.0.8"), 9, 8);
    let e = ct
        .get(&theirs, None)
        .await
        .unwrap()
        .expect("entry made by conntrack -I");
    assert_eq!(e.mark, Some(3));
    assert_eq!(lib_keys(&ct.dump(None).await.unwrap()), cli_keys(&ns, &[]));
}

#[tokio::test]
async fn other_protocols_and_nat_tuples() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    let mut ct = ns.open();
    let (a, b) = (ip("127.0.0.1"), ip("127.0.0.2"));
    for p in [proto::SCTP, proto::UDPLITE, proto::GRE] {
        ct.create(&NewEntry::new(Tuple::ports(p, a, b, 100, 200), 60))
            .await
            .unwrap();
    }
    let mut generic = Tuple::ports(99, a, b, 0, 0);
    generic.src_port = None;
    generic.dst_port = None;
    ct.create(&NewEntry::new(generic, 60)).await.unwrap();
    // A DNAT-like entry: the reply comes from another address and port (the
    // kernel ignores NAT status bits from userspace).
    let mut nat = NewEntry::new(udp(7, 8), 60);
    nat.reply = Some(Tuple::ports(proto::UDP, ip("127.0.0.3"), a, 9, 7));
    ct.create(&nat).await.unwrap();

    let ours = ct.dump(None).await.unwrap();
    assert_eq!(ours.len(), 5);
    assert_eq!(lib_keys(&ours), cli_keys(&ns, &[]));
    let e = ct.get(&udp(7, 8), None).await.unwrap().unwrap();
    assert_eq!(e.reply.src, ip("127.0.0.3"));
}

#[tokio::test]
async fn update_changes_what_conntrack_shows() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    let mut ct = ns.open();
    ct.create(&NewEntry::new(udp(10, 20), 30)).await.unwrap();
    let mut upd = Update::new(udp(10, 20));
    upd.mark = Some(0xbeef);
    upd.timeout = Some(500);
    ct.update(&upd).await.unwrap();
    let e = ct.get(&udp(10, 20), None).await.unwrap().unwrap();
    assert_eq!(e.mark, Some(0xbeef));
    assert!(e.timeout.unwrap() > 400);
    assert_eq!(lib_keys(&[e]), cli_keys(&ns, &[]));

    // conntrack -U on the same tuple; we see its change.
    let (code, _) = ns.conntrack(&[
        "-U",
        "-p",
        "udp",
        "-s",
        "127.0.0.1",
        "-d",
        "127.0.0.2",
        "--sport",
        "10",
        "--dport",
        "20",
        "-m",
        "7",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        ct.get(&udp(10, 20), None).await.unwrap().unwrap().mark,
        Some(7)
    );

    let err = ct.update(&Update::new(udp(11, 20))).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn delete_and_flush_match_conntrack() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    let ports = ns.udp_flows(ip("127.0.0.1"), 8000, 4);
    ns.udp_flows(ip("::1"), 8001, 2);
    let mut ct = ns.open();
    let entries = ct.dump(Some(Family::Ipv4)).await.unwrap();
    let victim = entries
        .iter()
        .find(|e| e.orig.src_port == Some(ports[0]))
        .unwrap();

    // Delete by us: conntrack no longer lists it, and deleting again is ENOENT.
    ct.delete(&victim.orig, None).await.unwrap();
    assert!(!cli_keys(&ns, &[]).contains(&key_of_entry(victim)));
    let err = ct.delete(&victim.orig, None).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert_eq!(err.errno(), Some(libc::ENOENT));

    // Delete by conntrack -D: we no longer see it.
    let sport = ports[1].to_string();
    let (code, _) = ns.conntrack(&["-D", "-p", "udp", "--sport", &sport]);
    assert_eq!(code, 0);
    let left = ct.dump(None).await.unwrap();
    assert_eq!(left.len(), 4);
    assert!(!left.iter().any(|e| e.orig.src_port == Some(ports[1])));
    // conntrack -D on nothing exits 1; our filtered delete finds nothing.
    let (code, _) = ns.conntrack(&["-D", "-p", "udp", "--sport", &sport]);
    assert_eq!(code, 1);
    let filter = TupleFilter {
        proto: Some(proto::UDP),
        orig_src_port: Some(ports[1]),
        ..TupleFilter::default()
    };
    assert!(ct.delete_matching(&filter).await.unwrap().is_empty());
    let filter = TupleFilter {
        orig_src_port: Some(ports[2]),
        ..TupleFilter::default()
    };
    assert_eq!(ct.delete_matching(&filter).await.unwrap().len(), 1);

    // conntrack -F -f ipv6 leaves the IPv4 flows, as does our flush(Some(Ipv6)).
    ns.udp_flows(ip("::1"), 8003, 1);
    let (code, _) = ns.conntrack(&["-F", "-f", "ipv6"]);
    assert_eq!(code, 0);
    assert!(
        ct.dump(None)
            .await
            .unwrap()
            .iter()
            .all(|e| e.family == Family::Ipv4)
    );
    ns.udp_flows(ip("::1"), 8001, 2);

    // Flush IPv4 only: the IPv6 flows stay.
    ct.flush(Some(Family::Ipv4)).await.unwrap();
    let left = ct.dump(None).await.unwrap();
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|e| e.family == Family::Ipv6));
    assert_eq!(lib_keys(&left), cli_keys(&ns, &[]));
    ct.flush(None).await.unwrap();
    assert!(ct.dump(None).await.unwrap().is_empty());
    assert!(cli_keys(&ns, &[]).is_empty());

    // conntrack -F of flows we see.
    ns.udp_flows(ip("127.0.0.1"), 8002, 3);
    assert_eq!(ct.count().await.unwrap(), 3);
    let (code, _) = ns.conntrack(&["-F"]);
    assert_eq!(code, 0);
    assert_eq!(ct.count().await.unwrap(), 0);
}

#[tokio::test]
async fn create_with_nat_matches_conntrack() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    let mut ct = ns.open();
    // SNAT to an address and port, DNAT to an address: the kernel rewrites the reply.
    let mut new = NewEntry::new(udp(7, 53), 120);
    new.src_nat = Some(NatRange {
        addr: ip("127.0.0.9"),
        port: Some(5000),
    });
    new.dst_nat = Some(NatRange {
        addr: ip("127.0.0.8"),
        port: None,
    });
    ct.create(&new).await.unwrap();
    let e = ct.get(&udp(7, 53), None).await.unwrap().unwrap();
    assert_eq!(e.reply.dst, ip("127.0.0.9"));
    assert_eq!(e.reply.dst_port, Some(5000));
    assert_eq!(e.reply.src, ip("127.0.0.8"));
    assert!(
        e.status
            .contains(Status::SRC_NAT_DONE | Status::DST_NAT_DONE)
    );
    // The same entry made by conntrack -I lists the same.
    let (code, _) = ns.conntrack(&[
        "-I",
        "-p",
        "udp",
        "-s",
        "127.0.0.1",
        "-d",
        "127.0.0.2",
        "--sport",
        "8",
        "--dport",
        "53",
        "-t",
        "120",
        "--src-nat",
        "127.0.0.9:5001",
        "--dst-nat",
        "127.0.0.8",
    ]);
    assert_eq!(code, 0);
    let theirs = ct.get(&udp(8, 53), None).await.unwrap().unwrap();
    assert_eq!(theirs.reply.dst_port, Some(5001));
    assert_eq!(
        (theirs.reply.src, theirs.reply.dst),
        (e.reply.src, e.reply.dst)
    );
    assert_eq!(theirs.status, e.status);
}
