//! `kfree_skb` tracepoint: netfilter drops, with or without a conntrack entry attached.
//! Counted only on tier 1 (the kprobes give the cause); tier 2 builds on it.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use ct_common::stat;

use crate::{
    emit::count,
    kernel::{netfilter_drop, skb_ct},
};

#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> u32 {
    // tp_btf args: (skb, location[, reason[, rx_sk]]); no reason before 5.17.
    let skb: u64 = ctx.arg(0);
    if !netfilter_drop(|i| ctx.arg(i)) {
        return 0;
    }
    count(if skb_ct(skb) != 0 {
        stat::NF_DROPS_WITH_CT
    } else {
        stat::NF_DROPS_NO_CT
    });
    0
}
