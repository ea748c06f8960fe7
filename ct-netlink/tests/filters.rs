//! Kernel-side dump filters (mark, zone, status), counter zeroing and labels.

mod common;

use std::net::IpAddr;

use common::{cli_keys, lib_keys};
use ct_netlink::{DumpFilter, NewEntry, Status, Tuple, Update, proto};

fn udp(sport: u16) -> Tuple {
    let a: IpAddr = "127.0.0.1".parse().unwrap();
    let b: IpAddr = "127.0.0.2".parse().unwrap();
    Tuple::ports(proto::UDP, a, b, sport, 53)
}

#[tokio::test]
async fn mark_zone_status_filters_match_conntrack() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    let mut ct = ns.open();
    for (sport, mark, zone, assured) in [
        (1, 0x105, None, false),
        (2, 0x205, Some(5), true),
        (3, 0x006, Some(5), false),
        (4, 0x005, None, true),
    ] {
        let mut n = NewEntry::new(udp(sport), 100);
        n.mark = Some(mark);
        n.zone = zone;
        if assured {
            n.status = Some(Status::SEEN_REPLY | Status::ASSURED);
        }
        ct.create(&n).await.unwrap();
    }
    let mark = DumpFilter {
        mark: Some((0x5, 0xff)),
        ..DumpFilter::default()
    };
    let ours = ct.dump_filtered(&mark).await.unwrap();
    assert_eq!(ours.len(), 3);
    assert_eq!(lib_keys(&ours), cli_keys(&ns, &["-m", "0x5/0xff"]));

    let zone = DumpFilter {
        zone: Some(5),
        ..DumpFilter::default()
    };
    let ours = ct.dump_filtered(&zone).await.unwrap();
    assert_eq!(ours.len(), 2);
    assert!(ours.iter().all(|e| e.zone == Some(5)));
    assert_eq!(lib_keys(&ours), cli_keys(&ns, &["-w", "5"]));
    // get/delete inside a zone need the zone.
    assert!(ct.get(&udp(2), None).await.unwrap().is_none());
    assert!(ct.get(&udp(2), Some(5)).await.unwrap().is_some());

    let assured = DumpFilter {
        status: Some((Status::ASSURED, Status::ASSURED)),
        ..DumpFilter::default()
    };
    let ours = ct.dump_filtered(&assured).await.unwrap();
    assert_eq!(ours.len(), 2);
    assert_eq!(lib_keys(&ours), cli_keys(&ns, &["-u", "ASSURED"]));

    ct.delete(&udp(2), Some(5)).await.unwrap();
    assert_eq!(cli_keys(&ns, &["-w", "5"]).len(), 1);
}

#[tokio::test]
async fn zero_counters_while_dumping() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    ns.enable_acct();
    ns.udp_flows("127.0.0.1".parse().unwrap(), 5000, 2);
    let mut ct = ns.open();
    let zero = DumpFilter {
        zero_counters: true,
        ..DumpFilter::default()
    };
    let before = ct.dump_filtered(&zero).await.unwrap();
    assert!(before.iter().all(|e| e.counters_orig.unwrap().packets == 1));
    let after = ct.dump(None).await.unwrap();
    assert!(after.iter().all(|e| e.counters_orig.unwrap().packets == 0));
    assert_eq!(lib_keys(&after), cli_keys(&ns, &[]));
}

#[tokio::test]
async fn labels_roundtrip() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    // The kernel attaches the label extension only once something in the
    // namespace uses labels.
    ns.sh("nft add rule inet t c ct label set 1");
    let mut ct = ns.open();
    let mut labels = vec![0u8; 16];
    labels[0] = 0b1000_0001; // bits 0 and 7
    let mut n = NewEntry::new(udp(9), 100);
    n.labels = Some(labels.clone());
    ct.create(&n).await.unwrap();
    let e = ct.get(&udp(9), None).await.unwrap().unwrap();
    assert_eq!(e.labels.as_deref(), Some(&labels[..]));
    assert_eq!(e.label_bits(), [0, 7]);

    let mut u = Update::new(udp(9));
    let mut more = vec![0u8; 16];
    more[1] = 1; // bit 8
    u.labels = Some(more.clone());
    u.labels_mask = Some(more);
    ct.update(&u).await.unwrap();
    let e = ct.get(&udp(9), None).await.unwrap().unwrap();
    assert_eq!(e.label_bits(), [0, 7, 8]);
}
