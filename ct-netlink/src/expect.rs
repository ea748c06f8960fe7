//! The expectation table (`conntrack -L expect`, `-D expect`, `-F expect`, `-I expect`).
//!
//! netlink-packet-netfilter has no expectation subsystem, so these messages carry
//! raw attributes; tuples inside reuse its tuple codec.

use netlink_packet_core::{DefaultNla, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_netfilter::NetfilterMessageInner;
use serde::Serialize;

use crate::attrs::{be_u16, be_u32, c_string, raw, tuple_from_bytes, tuple_nla};
use crate::entry::{Family, Tuple};
use crate::error::{Error, Result};
use crate::ops::Conntrack;
use crate::socket::{NFNL_SUBSYS_CTNETLINK_EXP, Reply, Request, decode_err};

// enum cntl_exp_msg_types
const IPCTNL_MSG_EXP_NEW: u8 = 0;
const IPCTNL_MSG_EXP_GET: u8 = 1;
const IPCTNL_MSG_EXP_DELETE: u8 = 2;
const IPCTNL_MSG_EXP_GET_STATS_CPU: u8 = 3;
// enum ctattr_expect
const CTA_EXPECT_MASTER: u16 = 1;
const CTA_EXPECT_TUPLE: u16 = 2;
const CTA_EXPECT_MASK: u16 = 3;
const CTA_EXPECT_TIMEOUT: u16 = 4;
const CTA_EXPECT_ID: u16 = 5;
const CTA_EXPECT_HELP_NAME: u16 = 6;
const CTA_EXPECT_ZONE: u16 = 7;
const CTA_EXPECT_FLAGS: u16 = 8;
const CTA_EXPECT_CLASS: u16 = 9;
const CTA_EXPECT_FN: u16 = 11;

/// One expectation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Expectation {
    pub family: Family,
    /// Original tuple of the connection that created the expectation.
    pub master: Tuple,
    /// The expected connection.
    pub tuple: Tuple,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<Tuple>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helper: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<u16>,
    /// `NF_CT_EXPECT_*` flags (PERMANENT=1, INACTIVE=2, USERSPACE=4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

/// An expectation to insert; the master entry must exist and have a helper.
#[derive(Debug, Clone)]
pub struct NewExpectation {
    pub master: Tuple,
    pub tuple: Tuple,
    pub mask: Tuple,
    /// Seconds.
    pub timeout: u32,
    pub helper: Option<String>,
    pub zone: Option<u16>,
    pub flags: Option<u32>,
    pub class: Option<u32>,
}

fn decode(af: u8, attrs: &[DefaultNla]) -> Option<Expectation> {
    let (mut master, mut tuple) = (None, None);
    let mut rest = Vec::new();
    for a in attrs {
        let (kind, v) = raw(a);
        match kind {
            CTA_EXPECT_MASTER => master = tuple_from_bytes(&v),
            CTA_EXPECT_TUPLE => tuple = tuple_from_bytes(&v),
            _ => rest.push((kind, v)),
        }
    }
    let tuple = tuple?;
    let mut e = Expectation {
        family: Family::from_af(af).unwrap_or_else(|| tuple.family()),
        master: master?,
        tuple,
        mask: None,
        timeout: None,
        id: None,
        helper: None,
        zone: None,
        flags: None,
        class: None,
        function: None,
    };
    for (kind, v) in rest {
        match kind {
            CTA_EXPECT_MASK => e.mask = tuple_from_bytes(&v),
            CTA_EXPECT_TIMEOUT => e.timeout = be_u32(&v),
            CTA_EXPECT_ID => e.id = be_u32(&v),
            CTA_EXPECT_HELP_NAME => e.helper = Some(c_string(&v)),
            CTA_EXPECT_ZONE => e.zone = be_u16(&v),
            CTA_EXPECT_FLAGS => e.flags = be_u32(&v),
            CTA_EXPECT_CLASS => e.class = be_u32(&v),
            CTA_EXPECT_FN => e.function = Some(c_string(&v)),
            _ => {}
        }
    }
    Some(e)
}

pub(crate) fn reply_expectation(op: &'static str, r: &Reply) -> Result<Option<Expectation>> {
    let NetfilterMessageInner::Other { attributes, .. } = &r.message.inner else {
        return Ok(None);
    };
    decode(u8::from(r.message.header.family), attributes)
        .map(Some)
        .ok_or_else(|| decode_err(op, "expectation without master or tuple"))
}

fn request(op: &'static str, msg_type: u8, family: u8) -> Request {
    let mut req = Request::new(op, msg_type, family);
    req.subsys = NFNL_SUBSYS_CTNETLINK_EXP;
    req
}

fn raw_attr(nla: DefaultNla) -> netlink_packet_netfilter::conntrack::ConntrackAttribute {
    netlink_packet_netfilter::conntrack::ConntrackAttribute::Other(nla)
}

fn u32_nla(kind: u16, v: u32) -> DefaultNla {
    DefaultNla::new(kind, v.to_be_bytes().to_vec())
}

impl Conntrack {
    async fn collect_expectations(&mut self, req: Request) -> Result<Vec<Expectation>> {
        let op = req.op;
        let mut out = Vec::new();
        self.socket()
            .request(&req, |r| {
                out.extend(reply_expectation(op, &r)?);
                Ok(())
            })
            .await?;
        Ok(out)
    }

    /// Per-CPU expectation counters, by CPU.
    pub async fn exp_stats_cpu(&mut self) -> Result<Vec<crate::stats::ExpCpuStats>> {
        let mut req = request("expect stats", IPCTNL_MSG_EXP_GET_STATS_CPU, 0);
        req.flags = NLM_F_DUMP;
        let mut out = Vec::new();
        self.socket()
            .request(&req, |r| {
                let cpu = r.message.header.res_id;
                out.push(crate::stats::decode_exp_cpu(cpu, crate::ops::raw_attrs(&r)));
                Ok(())
            })
            .await?;
        out.sort_by_key(|s| s.cpu);
        Ok(out)
    }

    /// All expectations (of one family, if given).
    pub async fn expectations(&mut self, family: Option<Family>) -> Result<Vec<Expectation>> {
        let af = family.map_or(0, Family::to_af);
        let mut req = request("expect list", IPCTNL_MSG_EXP_GET, af);
        req.flags = NLM_F_DUMP;
        self.collect_expectations(req).await
    }

    /// The expectation for this expected tuple, or `None`.
    pub async fn get_expectation(&mut self, tuple: &Tuple) -> Result<Option<Expectation>> {
        let mut req = request("expect get", IPCTNL_MSG_EXP_GET, tuple.family().to_af());
        req.attrs.push(raw_attr(tuple_nla(CTA_EXPECT_TUPLE, tuple)));
        match self.collect_expectations(req).await {
            Ok(mut v) => Ok(v.pop()),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Delete the expectation for this expected tuple ([`Error::NotFound`] if none).
    pub async fn delete_expectation(&mut self, tuple: &Tuple) -> Result<()> {
        let mut req = request(
            "expect delete",
            IPCTNL_MSG_EXP_DELETE,
            tuple.family().to_af(),
        );
        req.attrs.push(raw_attr(tuple_nla(CTA_EXPECT_TUPLE, tuple)));
        self.socket().request(&req, |_| Ok(())).await
    }

    /// Delete all expectations (`conntrack -F expect`).
    pub async fn flush_expectations(&mut self, family: Option<Family>) -> Result<()> {
        let af = family.map_or(0, Family::to_af);
        let req = request("expect flush", IPCTNL_MSG_EXP_DELETE, af);
        self.socket().request(&req, |_| Ok(())).await
    }

    /// Insert an expectation ([`Error::Exists`] if taken, [`Error::NotFound`] without
    /// the master, [`Error::Unavailable`] if the master has no helper).
    pub async fn create_expectation(&mut self, n: &NewExpectation) -> Result<()> {
        let mut req = request(
            "expect create",
            IPCTNL_MSG_EXP_NEW,
            n.tuple.family().to_af(),
        );
        req.flags = NLM_F_CREATE | NLM_F_EXCL;
        let mut attrs = vec![
            tuple_nla(CTA_EXPECT_MASTER, &n.master),
            tuple_nla(CTA_EXPECT_TUPLE, &n.tuple),
            tuple_nla(CTA_EXPECT_MASK, &n.mask),
            u32_nla(CTA_EXPECT_TIMEOUT, n.timeout),
        ];
        if let Some(h) = &n.helper {
            let mut v = h.as_bytes().to_vec();
            v.push(0);
            attrs.push(DefaultNla::new(CTA_EXPECT_HELP_NAME, v));
        }
        if let Some(z) = n.zone {
            attrs.push(DefaultNla::new(CTA_EXPECT_ZONE, z.to_be_bytes().to_vec()));
        }
        if let Some(f) = n.flags {
            attrs.push(u32_nla(CTA_EXPECT_FLAGS, f));
        }
        if let Some(c) = n.class {
            attrs.push(u32_nla(CTA_EXPECT_CLASS, c));
        }
        req.attrs = attrs.into_iter().map(raw_attr).collect();
        self.socket().request(&req, |_| Ok(())).await
    }
}
