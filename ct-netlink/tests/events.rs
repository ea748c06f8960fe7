//! Events: NEW for each flow, DESTROY for each on flush, and a visible, counted overrun.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use common::NetNs;
use ct_netlink::{
    Event, EventGroups, EventKind, EventListener, ListenerOptions, NewEntry, Tuple, proto,
};
use futures_core::Stream;
use tokio::time::timeout;

fn options(ns: &NetNs, recv_buffer: usize) -> ListenerOptions {
    ListenerOptions {
        recv_buffer,
        netns: Some(ns.path()),
    }
}

/// Collect `n` events of `kind` (ignoring other kinds), failing after 5 s.
async fn collect(l: &mut EventListener, kind: EventKind, n: usize) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    while ports.len() < n {
        let ev = timeout(Duration::from_secs(5), l.next())
            .await
            .unwrap_or_else(|_| panic!("only {} {kind:?} events of {n}", ports.len()))
            .unwrap();
        match ev {
            Event::Conntrack { kind: k, entry } if k == kind => {
                ports.insert(entry.orig.src_port.unwrap());
            }
            Event::Conntrack { .. } => {}
            Event::Overrun { .. } => panic!("unexpected overrun"),
        }
    }
    ports
}

#[tokio::test]
async fn new_then_destroy_events() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    // Subscribe before the flows exist: with nf_conntrack_events=2 only flows
    // created while a listener exists carry the event extension.
    let mut l = EventListener::subscribe(EventGroups::ALL, &options(&ns, 1 << 20)).unwrap();
    assert!(l.recv_buffer().unwrap() >= 1 << 20);
    let n = 20;
    let ports: BTreeSet<u16> = ns
        .udp_flows("127.0.0.1".parse().unwrap(), 9000, n)
        .into_iter()
        .collect();
    assert_eq!(collect(&mut l, EventKind::New, n).await, ports);

    let mut ct = ns.open();
    ct.flush(None).await.unwrap();
    assert_eq!(collect(&mut l, EventKind::Destroy, n).await, ports);
    assert_eq!(l.overruns(), 0);
}

#[tokio::test]
async fn only_subscribed_groups_arrive() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    let mut l = EventListener::subscribe(EventGroups::DESTROY, &options(&ns, 1 << 20)).unwrap();
    let ports: BTreeSet<u16> = ns
        .udp_flows("::1".parse().unwrap(), 9001, 3)
        .into_iter()
        .collect();
    ns.open().flush(None).await.unwrap();
    // The first event must already be a DESTROY: NEW was not subscribed. Read it
    // through the Stream impl.
    let first = std::future::poll_fn(|cx| Pin::new(&mut l).poll_next(cx));
    match timeout(Duration::from_secs(5), first)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    {
        Event::Conntrack { kind, .. } => assert_eq!(kind, EventKind::Destroy),
        other => panic!("{other:?}"),
    }
    let rest = collect(&mut l, EventKind::Destroy, 2).await;
    assert!(rest.is_subset(&ports));
}

#[tokio::test]
async fn overflow_surfaces_as_overrun() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    // A tiny buffer and no reading while 500 entries are created: the kernel
    // must drop events, and the listener must say so instead of going quiet.
    let mut l = EventListener::subscribe(EventGroups::NEW, &options(&ns, 4096)).unwrap();
    let mut ct = ns.open();
    let a: IpAddr = "127.0.0.1".parse().unwrap();
    for port in 1..=500 {
        let t = Tuple::ports(proto::UDP, a, a, port, 53);
        ct.create(&NewEntry::new(t, 60)).await.unwrap();
    }
    let mut seen_new = 0;
    let total = loop {
        match timeout(Duration::from_secs(5), l.next())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Overrun { total } => break total,
            Event::Conntrack { .. } => seen_new += 1,
        }
    };
    assert_eq!(total, 1);
    assert_eq!(l.overruns(), 1);
    // What was queued before the overflow still arrives; the drop counter has the rest.
    while let Ok(ev) = timeout(Duration::from_millis(200), l.next()).await {
        match ev.unwrap() {
            Event::Conntrack { .. } => seen_new += 1,
            Event::Overrun { .. } => panic!("a second overrun while nothing was sent"),
        }
    }
    assert!(
        seen_new < 500,
        "an overrun means some of the 500 events were lost"
    );
    assert_eq!(
        l.dropped().unwrap(),
        500 - seen_new,
        "the drop counter counts every event lost ({seen_new} arrived)"
    );
    // After the overrun the caller resyncs with a dump, which has everything.
    assert_eq!(ct.dump(None).await.unwrap().len(), 500);
}

/// `[NEW] ...` lines of `conntrack -E` turned into comparison keys.
fn cli_event_keys(out: &str, tag: &str) -> Vec<String> {
    let mut keys: Vec<String> = out
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix(tag))
        .map(common::key_of_line)
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn events_match_conntrack_e() {
    let Some(ns) = common::netns_with_ctnetlink() else {
        return;
    };
    let mut l = EventListener::subscribe(EventGroups::NEW, &options(&ns, 1 << 20)).unwrap();
    let cli = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "timeout",
            "3",
            "conntrack",
            "-E",
            "-e",
            "NEW",
        ])
        .args(["-o", "extended,id"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Give conntrack time to subscribe before the flows exist.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = 5;
    ns.udp_flows("127.0.0.1".parse().unwrap(), 9100, n);
    let mut ours = Vec::new();
    while ours.len() < n {
        match timeout(Duration::from_secs(5), l.next())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Conntrack { entry, .. } => ours.push(common::key_of_entry(&entry)),
            other => panic!("{other:?}"),
        }
    }
    ours.sort();
    let out = cli.wait_with_output().unwrap();
    let theirs = cli_event_keys(&String::from_utf8_lossy(&out.stdout), "[NEW]");
    assert_eq!(ours, theirs);
}
