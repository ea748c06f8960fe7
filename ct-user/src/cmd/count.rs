//! `ctscope count`: the number of entries, like `conntrack -C`, or one line per
//! namespace with --all-netns.

use serde::Serialize;

use super::Target;
use crate::{
    cli::CountArgs,
    sys::{netns::Tag, stdout},
};

#[derive(Serialize)]
struct Row {
    #[serde(flatten)]
    tag: Option<Tag>,
    count: u32,
}

pub async fn run(args: &CountArgs) -> anyhow::Result<()> {
    for target in Target::from_args(&args.netns)? {
        let Some(count) = target.run(async |ct| ct.count().await).await? else {
            continue;
        };
        let row = Row {
            tag: target.tag.as_ref().map(|n| n.tag()),
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
    Ok(match &row.tag {
        None => row.count.to_string(),
        Some(t) => format!("{} {} {}", t.netns, row.count, t.who.names.join(","))
            .trim_end()
            .to_owned(),
    })
}
