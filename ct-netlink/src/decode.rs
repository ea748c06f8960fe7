//! A received datagram decoded without a socket, as the dump, event, statistics and
//! expectation paths decode what the kernel sends. Public so that the fuzz targets
//! (`fuzz/`) reach the decoders through one entry point.

use netlink_packet_core::NetlinkPayload;

use crate::entry::Entry;
use crate::error::Result;
use crate::expect::{Expectation, reply_expectation};
use crate::ops::{raw_attrs, reply_entry};
use crate::socket::{Reply, for_each_message};
use crate::stats::{CpuStats, GlobalStats, decode_cpu, decode_global};

/// What one netlink message of a datagram decoded to.
#[derive(Debug)]
pub enum Message {
    /// A conntrack message (dump reply or event) and its entry.
    Entry(Box<Entry>),
    /// An expectation message.
    Expectation(Box<Expectation>),
    /// Any other ctnetlink message, read both ways the statistics requests read theirs.
    Stats(CpuStats, GlobalStats),
    /// NLMSG_DONE, an error or ACK, or a message without a payload we read.
    Control,
}

/// Decodes every message of `data`, one datagram as `recv` returns it. Errors are the
/// ones a dump or listener would return for the same bytes.
pub fn decode_datagram(data: &[u8]) -> Result<Vec<Message>> {
    let mut out = Vec::new();
    for_each_message("decode", data, |msg| {
        let NetlinkPayload::InnerMessage(message) = msg.payload else {
            out.push(Message::Control);
            return Ok(());
        };
        let reply = Reply {
            header: msg.header,
            message,
        };
        out.push(decode_reply(&reply)?);
        Ok(())
    })?;
    Ok(out)
}

fn decode_reply(r: &Reply) -> Result<Message> {
    if let Some(entry) = reply_entry("decode", r)? {
        return Ok(Message::Entry(Box::new(entry)));
    }
    if let Some(exp) = reply_expectation("decode", r)? {
        return Ok(Message::Expectation(Box::new(exp)));
    }
    let attrs = raw_attrs(r);
    Ok(Message::Stats(
        decode_cpu(r.message.header.res_id, attrs),
        decode_global(attrs),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed of the `netlink` fuzz target: a dump datagram the kernel sent for three
    /// entries made with `conntrack -I` (TCP with mark and zone, UDP over IPv6, ICMP).
    const DUMP: &[u8] = include_bytes!("../../fuzz/corpus/netlink/dump");

    #[test]
    fn decodes_a_real_dump_datagram() {
        let entries: Vec<Entry> = decode_datagram(DUMP)
            .unwrap()
            .into_iter()
            .filter_map(|m| match m {
                Message::Entry(e) => Some(*e),
                _ => None,
            })
            .collect();
        assert_eq!(entries.len(), 3, "{entries:?}");
        let tcp = entries.iter().find(|e| e.orig.proto == 6).unwrap();
        assert_eq!(tcp.orig.src.to_string(), "10.77.0.1");
        assert_eq!(
            (tcp.orig.src_port, tcp.orig.dst_port),
            (Some(1234), Some(80))
        );
        assert_eq!((tcp.mark, tcp.zone), (Some(7), Some(3)));
        let udp = entries.iter().find(|e| e.orig.proto == 17).unwrap();
        assert_eq!(udp.orig.dst.to_string(), "fd00:77::2");
        let icmp = entries.iter().find(|e| e.orig.proto == 1).unwrap();
        assert_eq!(icmp.orig.icmp_id, Some(77));
    }

    /// Found by the `netlink` fuzz target: an nftables message (subsystem 10) with an
    /// attribute length below 4 panicked inside netlink-packet-netfilter. Messages of
    /// other subsystems are now skipped unparsed.
    #[test]
    fn other_subsystems_are_skipped() {
        let crash = include_bytes!("../../fuzz/corpus/netlink/crash-nftables-nla-length");
        let _ = decode_datagram(crash);
        // Its first message (0xd0 bytes) alone: skipped, nothing decoded.
        assert!(decode_datagram(&crash[..0xd0]).unwrap().is_empty());
        // The same bytes relabelled as a conntrack message are parsed (and rejected).
        let mut ct = crash.to_vec();
        ct[5] = 1;
        let _ = decode_datagram(&ct);
    }

    #[test]
    fn truncated_datagrams_are_errors_or_partial_never_panics() {
        for len in 0..DUMP.len() {
            let _ = decode_datagram(&DUMP[..len]);
        }
    }
}
