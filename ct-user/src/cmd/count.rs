//! `ctscope count`: the number of entries, like `conntrack -C`, or one line per
//! namespace with --all-netns.

use serde::Serialize;

use super::Target;
use crate::{
    cli::CountArgs,
    sys::{cri::PodNames, stdout, workload::Workload},
};

#[derive(Serialize)]
struct Row<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    names: &'a [String],
    #[serde(flatten)]
    workload: Option<Workload>,
    count: u32,
}

pub async fn run(args: &CountArgs) -> anyhow::Result<()> {
    let targets = Target::from_args(&args.netns)?;
    let pods = if targets.iter().any(|t| t.tag.is_some()) {
        PodNames::query().await
    } else {
        PodNames::default()
    };
    for target in targets {
        let Some(count) = target.run(async |ct| ct.count().await).await? else {
            continue;
        };
        let ns = target.tag.as_ref();
        let row = Row {
            netns: ns.map(|n| n.inode),
            names: ns.map_or(&[], |n| &n.names),
            workload: ns.map(|n| n.workload().with_pod_names(&pods)),
            count,
        };
        stdout::line(line(&row, args.json)?)?;
    }
    Ok(())
}

/// `N` for one namespace; `INODE N [NAME,...]` per namespace; or a JSON object.
fn line(row: &Row, json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string(row)?);
    }
    Ok(match row.netns {
        None => row.count.to_string(),
        Some(inode) => format!("{inode} {} {}", row.count, row.names.join(","))
            .trim_end()
            .to_owned(),
    })
}
