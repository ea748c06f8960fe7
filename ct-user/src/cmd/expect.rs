//! `ctscope expect`: the expectation table (`conntrack -L/-G/-D/-F/-C expect`), as
//! `conntrack -L expect` lines or JSON Lines.

use anyhow::bail;
use ct_netlink::{Expectation, Family};

use super::Target;
use crate::{
    cli::{ExpectArgs, ExpectOp},
    compat::output::expectation as expectation_line,
    sys::stdout,
};

fn print(x: &Expectation, json: bool) -> anyhow::Result<()> {
    if json {
        stdout::line(serde_json::to_string(x)?)
    } else {
        stdout::line(expectation_line(x))
    }
}

pub async fn run(args: &ExpectArgs) -> anyhow::Result<()> {
    let target = Target::one(args.netns.as_deref())?;
    match &args.op {
        ExpectOp::List { json, family } => {
            let family = family.map(Family::from);
            let list = target
                .run(async |ct| ct.expectations(family).await)
                .await?
                .unwrap_or_default();
            for x in &list {
                print(x, *json)?;
            }
            eprintln!("ctscope: {} expectations have been shown.", list.len());
        }
        ExpectOp::Get { tuple, json } => {
            let t = tuple.tuple().map_err(anyhow::Error::msg)?;
            match target
                .run(async |ct| ct.get_expectation(&t).await)
                .await?
                .flatten()
            {
                Some(x) => print(&x, *json)?,
                None => bail!("no expectation has this tuple"),
            }
        }
        ExpectOp::Delete { tuple } => {
            let t = tuple.tuple().map_err(anyhow::Error::msg)?;
            target
                .run(async |ct| ct.delete_expectation(&t).await)
                .await?;
            eprintln!("ctscope: 1 expectations have been deleted.");
        }
        ExpectOp::Flush { family } => {
            let family = family.map(Family::from);
            target
                .run(async |ct| ct.flush_expectations(family).await)
                .await?;
            eprintln!("ctscope: expectation table has been emptied.");
        }
        ExpectOp::Count { json } => {
            let n = target
                .run(async |ct| ct.expectations(None).await)
                .await?
                .map_or(0, |l| l.len());
            if *json {
                stdout::line(serde_json::json!({ "count": n }))?;
            } else {
                stdout::line(n)?;
            }
        }
    }
    Ok(())
}
