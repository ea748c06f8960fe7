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
