//! The parallel DNS A/AAAA race without NAT: two threads send the same datagram from one
//! UDP socket at the same moment, so two CPUs build identical unconfirmed entries and the
//! second confirm finds the first. The kernel merges the loser into the winner
//! (`clash_resolve` +1, no drop). Every merge must appear as one `clash_resolved` event
//! with cause `merged` and the winner, and every round as exactly one `new`.
//!
//! With DNAT to two backends (kube-proxy style), racing packets may pick different
//! backends: their reply tuples differ, so instead of merging the kernel inserts the loser
//! reply-only with IPS_NAT_CLASH (`nat_clash_reply_only`); still `clash_resolve` +1.
//!
//! Both have IPv6 twins (`merged6`, `dnat6`): the race to an IPv6 resolver address.
//!
//! How often the race is won depends on scheduling (most of the 3000 rounds on a two-CPU
//! host; a handful in the VMs, whose vCPUs take turns on one host thread); the scenarios
//! assert equality with the kernel's count, whatever it is, and note it.

use std::{
    collections::{BTreeMap, BTreeSet},
    hint,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    thread,
};

use ctscope_tests::{
    events::{self, Tuple},
    kernel::CtStats,
    netns::{Family, Pair},
    nft, traffic,
};

use serde_json::Value;

use crate::common::{Ctx, UDP_PORT, Watch, event_wait, note};

const ROUNDS: u16 = 3000;
const FIRST_PORT: u16 = 33000;
/// The racing socket's source port.
const SPORT: u16 = 5454;

pub fn merged(watch: Watch) {
    merged_in(watch, Family::V4, 20);
}

/// [`merged`] to an IPv6 resolver address (fd00:200:102::2).
pub fn merged6(watch: Watch) {
    merged_in(watch, Family::V6, 102);
}

fn merged_in(watch: Watch, family: Family, subnet: u8) {
    let ctx = Ctx::of(watch, family, subnet, |_| {});
    let Some(clashes) = race_and_check(ctx, &["merged"]) else {
        return;
    };
    // Without NAT, loser and winner are the same flow in both directions.
    let refs: Vec<&Value> = clashes.iter().collect();
    events::assert_each(&refs, "clash_resolved event", |c| {
        let orig = Tuple::of(c, "orig");
        let want = Some(orig.reversed());
        if Tuple::from_json(&c["reply"]) != want {
            return Err(format!("reply is not {orig} reversed, yet nothing NATs"));
        }
        if Tuple::from_json(&c["winner"]["reply"]) != want {
            return Err(format!("the winner's reply is not {orig} reversed"));
        }
        Ok(())
    });
}

pub fn dnat(watch: Watch) {
    dnat_in(watch, Family::V4, 21);
}

/// [`dnat`] with ip6 DNAT to two IPv6 backends (fd00:200:107::2 and ::4).
pub fn dnat6(watch: Watch) {
    dnat_in(watch, Family::V6, 107);
}

fn dnat_in(watch: Watch, family: Family, subnet: u8) {
    let ctx = Ctx::of(watch, family, subnet, |p| {
        let backend = match p.family {
            Family::V4 => format!("{}/24", second_backend(p)),
            Family::V6 => format!("{}/64", second_backend(p)),
        };
        let mut argv = vec!["addr", "add", &backend, "dev", "vs"];
        if p.family == Family::V6 {
            argv.push("nodad"); // usable at once
        }
        p.s.ip(&argv);
        nft::apply(&p.c, &dnat_two_backends(p));
    });
    let p_backends = (ctx.pair.s_ip(), second_backend(&ctx.pair));
    let Some(clashes) = race_and_check(ctx, &["merged", "nat_clash_reply_only"]) else {
        return;
    };
    let backends = [p_backends.0.to_string(), p_backends.1.to_string()];
    let refs: Vec<&Value> = clashes.iter().collect();
    events::assert_each(&refs, "clash_resolved event", |c| {
        let (loser, winner) = (Tuple::of(c, "reply"), Tuple::of(&c["winner"], "reply"));
        for (who, t) in [("loser", &loser), ("winner", &winner)] {
            if !backends.contains(&t.src) {
                return Err(format!(
                    "the {who}'s reply {t} is not from a backend {backends:?}"
                ));
            }
        }
        // Merged: both picked one backend. Reply-only: they picked different ones.
        match (c["cause"].as_str(), loser == winner) {
            (Some("merged"), true) => Ok(()),
            (Some("nat_clash_reply_only"), false) if loser.src != winner.src => Ok(()),
            _ => Err(format!(
                "cause {} does not fit the replies: loser {loser}, winner {winner}",
                c["cause"]
            )),
        }
    });
    let reply_only = clashes
        .iter()
        .filter(|c| c["cause"] == "nat_clash_reply_only")
        .count();
    note(format!(
        "clash_resolve dnat: {reply_only} of {} resolved reply-only",
        clashes.len()
    ));
}

/// Races ROUNDS pairs from `c`, checks the kernel counters, then that every clash the
/// kernel resolved is one `clash_resolved` event with one of `causes`; returns them
/// (`None` when ctscope is not watching).
fn race_and_check(mut ctx: Ctx, causes: &[&str]) -> Option<Vec<Value>> {
    let p = &ctx.pair;
    let _sink = traffic::UdpSink::bind(&p.s, SocketAddr::new(p.s_ip(), UDP_PORT));
    let before = CtStats::read(&p.c);
    let (src, dst) = (SocketAddr::new(p.c_ip(), SPORT), p.s_ip());
    let (c_addr, s_addr) = (p.c_ip().to_string(), p.s_ip().to_string());
    let failed = p.c.run(move || race(src, dst));
    let delta = CtStats::read(&p.c).since(&before);
    assert_eq!(failed, 0, "sends failed; kernel delta {delta}");
    assert_eq!(
        delta.get("drop"),
        0,
        "a resolved clash drops nothing: {delta}"
    );
    let resolved = delta.get("clash_resolve");
    note(format!(
        "clash_resolve: {resolved} of {ROUNDS} rounds raced; kernel delta {delta}"
    ));

    let inode = ctx.inode;
    ctx.wait_events(event_wait(), |ev| {
        Ctx::count(ev, "new", inode, Some("udp")) >= usize::from(ROUNDS)
            && Ctx::count(ev, "clash_resolved", inode, Some("udp")) as u64 >= resolved
    });
    let evs = ctx.finish()?;
    let news = events::select(&evs, "new", inode, Some("udp"));
    assert_eq!(news.len(), usize::from(ROUNDS), "one `new` per round");
    let clashes = events::select(&evs, "clash_resolved", inode, Some("udp"));
    assert_eq!(
        clashes.len() as u64,
        resolved,
        "`clash_resolved` events vs the kernel's clash_resolve delta ({delta}):\n{}",
        events::sample(&clashes)
    );
    // Capping makes the count match whatever was counted; each event must also name a
    // round's flow (at most one clash per round) that entered the table once, and its
    // winner must be that same flow.
    let mut born: BTreeMap<Tuple, usize> = BTreeMap::new();
    for n in &news {
        *born.entry(Tuple::of(n, "orig")).or_default() += 1;
    }
    if let Some((t, n)) = born.iter().find(|&(_, &n)| n != 1) {
        panic!("{n} `new` events for {t}: one per round");
    }
    let mut rounds_seen = BTreeSet::new();
    events::assert_each(&clashes, "clash_resolved event", |c| {
        let cause = c["cause"].as_str().unwrap_or_default();
        if !causes.contains(&cause) {
            return Err(format!("cause {cause:?} not in {causes:?}"));
        }
        let orig = Tuple::from_json(&c["orig"]).ok_or("no orig tuple")?;
        let round = orig.dport.wrapping_sub(FIRST_PORT);
        let ours = (orig.src.as_str(), orig.sport, orig.dst.as_str())
            == (c_addr.as_str(), SPORT, s_addr.as_str())
            && round < ROUNDS;
        if !ours {
            return Err(format!("{orig} is not one of the race's flows"));
        }
        if !rounds_seen.insert(round) {
            return Err(format!("a second clash for round {round} ({orig})"));
        }
        if !born.contains_key(&orig) {
            return Err(format!(
                "no `new` for {orig}: the winner never entered the table"
            ));
        }
        let winner = Tuple::from_json(&c["winner"]["orig"]).ok_or("no winner")?;
        if winner != orig {
            return Err(format!("winner {winner} is not the same flow as {orig}"));
        }
        Ok(())
    });
    Some(clashes.into_iter().cloned().collect())
}

/// A second address on `s` in the pair's family, the other DNAT backend (host 4).
fn second_backend(p: &Pair) -> IpAddr {
    match p.s_ip() {
        IpAddr::V4(a) => {
            let [a, b, c, _] = a.octets();
            std::net::Ipv4Addr::new(a, b, c, 4).into()
        }
        IpAddr::V6(a) => {
            let mut segments = a.segments();
            segments[7] = 4;
            std::net::Ipv6Addr::from(segments).into()
        }
    }
}

/// DNAT of the race's destination ports to one of two backends at random.
fn dnat_two_backends(p: &Pair) -> String {
    let last = FIRST_PORT + ROUNDS - 1;
    let family = if p.family == Family::V6 { "ip6" } else { "ip" };
    format!(
        "table {family} ctst_dnat {{
    chain out {{
        type nat hook output priority -100;
        udp dport {FIRST_PORT}-{last} dnat to numgen random mod 2 map {{ 0 : {}, 1 : {} }}
    }}
}}
",
        p.s_ip(),
        second_backend(p)
    )
}

/// Each round, both threads send one datagram to the same destination port from the
/// same socket, released together by a spinning barrier (a sleeping one wakes the second
/// thread microseconds late, after the first has confirmed). Returns failed sends.
fn race(src: SocketAddr, dst: IpAddr) -> usize {
    let socket = Arc::new(UdpSocket::bind(src).unwrap_or_else(|e| panic!("bind {src}: {e}")));
    let arrivals = Arc::new(AtomicU32::new(0));
    let sender = |socket: Arc<UdpSocket>, arrivals: Arc<AtomicU32>| {
        thread::spawn(move || {
            (0..ROUNDS)
                .filter(|&round| {
                    let release = 2 * (u32::from(round) + 1);
                    arrivals.fetch_add(1, Ordering::AcqRel);
                    while arrivals.load(Ordering::Acquire) < release {
                        hint::spin_loop();
                    }
                    let dst = SocketAddr::new(dst, FIRST_PORT + round);
                    socket.send_to(b"A?", dst).is_err()
                })
                .count()
        })
    };
    let a = sender(socket.clone(), arrivals.clone());
    let b = sender(socket, arrivals);
    a.join().expect("sender a") + b.join().expect("sender b")
}
