//! How the agent stores an entry: the fields nearly every entry has, inline, without the
//! original tuple (the table's key holds it); an entry with any rarer field (counters,
//! timestamps, labels, a helper, a security context, SCTP/DCCP state, directional zones)
//! is kept whole, boxed. A ct-netlink `Entry` is 344 bytes; the inline form is about a
//! third of that, which is most of the agent's memory per entry.

use ct_netlink::{Entry, Family, Status, TcpInfo, Tuple};

#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    Common(Common),
    Whole(Box<Entry>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Common {
    family: Family,
    proto: u8,
    reply: Tuple,
    status: Status,
    timeout: Option<u32>,
    mark: Option<u32>,
    zone: Option<u16>,
    use_count: Option<u32>,
    id: Option<u32>,
    tcp: Option<TcpInfo>,
}

impl Stored {
    pub fn new(e: Entry) -> Self {
        let rare = e.sctp.is_some()
            || e.dccp.is_some()
            || e.counters_orig.is_some()
            || e.counters_reply.is_some()
            || e.timestamp.is_some()
            || e.labels.is_some()
            || e.helper.is_some()
            || e.secctx.is_some()
            || e.secmark.is_some()
            || e.orig.zone.is_some();
        if rare {
            return Stored::Whole(Box::new(e));
        }
        Stored::Common(Common {
            family: e.family,
            proto: e.proto,
            reply: e.reply,
            status: e.status,
            timeout: e.timeout,
            mark: e.mark,
            zone: e.zone,
            use_count: e.use_count,
            id: e.id,
            tcp: e.tcp,
        })
    }

    /// The entry, its original tuple given back.
    pub fn entry(&self, orig: &Tuple) -> Entry {
        match self {
            Stored::Whole(e) => (**e).clone(),
            Stored::Common(c) => Entry {
                family: c.family,
                proto: c.proto,
                reply: c.reply.clone(),
                status: c.status,
                timeout: c.timeout,
                mark: c.mark,
                zone: c.zone,
                use_count: c.use_count,
                id: c.id,
                tcp: c.tcp.clone(),
                ..Entry::new(orig.clone(), c.reply.clone())
            },
        }
    }

    pub fn reply(&self) -> &Tuple {
        match self {
            Stored::Whole(e) => &e.reply,
            Stored::Common(c) => &c.reply,
        }
    }

    pub fn timeout(&self) -> Option<u32> {
        match self {
            Stored::Whole(e) => e.timeout,
            Stored::Common(c) => c.timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use ct_netlink::{Counters, TcpState, proto};

    use super::*;

    fn tcp_entry() -> Entry {
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let orig = Tuple::ports(proto::TCP, a, b, 40000, 80);
        let mut e = Entry::new(orig.clone(), orig.inverted());
        e.status = Status(Status::CONFIRMED | Status::ASSURED);
        e.timeout = Some(431_999);
        e.mark = Some(7);
        e.use_count = Some(1);
        e.id = Some(99);
        e.tcp = Some(TcpInfo {
            state: TcpState::from_name("ESTABLISHED").unwrap(),
            wscale_orig: Some(7),
            wscale_reply: Some(7),
            flags_orig: Some(0x23),
            flags_reply: Some(0x23),
        });
        e
    }

    #[test]
    fn common_entries_round_trip_inline() {
        let e = tcp_entry();
        let s = Stored::new(e.clone());
        assert!(matches!(s, Stored::Common(_)));
        assert_eq!(s.entry(&e.orig), e);
        assert_eq!(s.timeout(), Some(431_999));
    }

    #[test]
    fn rare_fields_keep_the_whole_entry() {
        let mut e = tcp_entry();
        e.counters_orig = Some(Counters {
            packets: 3,
            bytes: 180,
        });
        let s = Stored::new(e.clone());
        assert!(matches!(s, Stored::Whole(_)));
        assert_eq!(s.entry(&e.orig), e);
    }

    #[test]
    fn the_inline_form_is_much_smaller() {
        assert!(
            size_of::<Stored>() * 2 < size_of::<Entry>(),
            "{}",
            size_of::<Stored>()
        );
    }
}
