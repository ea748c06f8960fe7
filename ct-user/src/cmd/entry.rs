//! `ctscope get`, `insert` and `update`: one entry by its original tuple, like
//! `conntrack -G`, `-I` and `-U`, printed as a `conntrack -L` line or one JSON object
//! (the fields of `list --json`).

use anyhow::bail;
use ct_netlink::{Entry, NewEntry, Tuple, Update};

use super::{Target, netns_inode};
use crate::{
    agent::{self, protocol::Request},
    cli::{GetArgs, InsertArgs, TupleArgs, UpdateArgs},
    render::conntrack_text,
    sys::stdout,
};

fn print(e: &Entry, json: bool) -> anyhow::Result<()> {
    if json {
        return stdout::line(serde_json::to_string(e)?);
    }
    let now = crate::clock::unix_secs();
    stdout::line(conntrack_text::entry_line(e, now))
}

/// The tuple (`Cli::validate` has already refused one that does not fit).
fn tuple_of(args: &TupleArgs) -> anyhow::Result<Tuple> {
    args.tuple().map_err(anyhow::Error::msg)
}

pub async fn get(args: &GetArgs) -> anyhow::Result<()> {
    let orig = tuple_of(&args.tuple)?;
    let zone = args.tuple.zone;
    if let Some(path) = args.agent.socket() {
        let request = Request::Get {
            netns: netns_inode(args.netns.as_deref())?,
            zone,
            tuple: orig.clone(),
            json: args.json,
        };
        if let Some(mut body) = agent::client::ask(&path, &request).await? {
            agent::client::copy_lines(&mut body).await?;
            return Ok(());
        }
    }
    let target = Target::one(args.netns.as_deref())?;
    match target
        .run(async |ct| ct.get(&orig, zone).await)
        .await?
        .flatten()
    {
        Some(e) => print(&e, args.json),
        None => bail!("no conntrack entry has this original tuple"),
    }
}

pub async fn insert(args: &InsertArgs) -> anyhow::Result<()> {
    let orig = tuple_of(&args.tuple)?;
    let mut reply = orig.inverted();
    if let (Some(src), Some(dst)) = (args.reply_src, args.reply_dst) {
        reply.src = src;
        reply.dst = dst;
    }
    if let Some(p) = args.reply_sport {
        reply.src_port = Some(p);
    }
    if let Some(p) = args.reply_dport {
        reply.dst_port = Some(p);
    }
    let mut n = NewEntry::new(orig.clone(), args.timeout);
    n.reply = Some(reply);
    n.status = args.status;
    n.mark = args.mark.map(|(m, _)| m);
    n.zone = args.tuple.zone;
    n.tcp_state = args.state;
    n.src_nat = args.src_nat;
    n.dst_nat = args.dst_nat;
    let zone = n.zone;
    let target = Target::one(args.netns.as_deref())?;
    let created = target
        .run(async |ct| {
            ct.create(&n).await?;
            ct.get(&orig, zone).await
        })
        .await;
    match created {
        Ok(Some(Some(e))) => print(&e, args.json),
        Ok(_) => bail!("the entry was created but has already gone (timeout too short?)"),
        Err(e) if format!("{e:#}").contains("already exists") => {
            bail!("{e:#} (use `ctscope update` to change it)")
        }
        Err(e) => Err(e),
    }
}

pub async fn update(args: &UpdateArgs) -> anyhow::Result<()> {
    let orig = tuple_of(&args.tuple)?;
    let zone = args.tuple.zone;
    let mut u = Update::new(orig.clone());
    u.zone = zone;
    u.timeout = args.timeout;
    if let Some((mark, mask)) = args.mark {
        u.mark = Some(mark & mask);
        if mask != u32::MAX {
            u.mark_mask = Some(mask);
        }
    }
    u.status = args.status;
    u.tcp_state = args.state;
    let target = Target::one(args.netns.as_deref())?;
    let updated = target
        .run(async |ct| {
            ct.update(&u).await?;
            ct.get(&orig, zone).await
        })
        .await?
        .flatten();
    match updated {
        Some(e) => print(&e, args.json),
        None => bail!("the entry was updated but has already gone"),
    }
}
