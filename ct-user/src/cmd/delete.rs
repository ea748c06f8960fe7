//! `ctscope delete`: delete the entries matching the filters, like `conntrack -D`.

use anyhow::bail;

use super::Target;
use crate::cli::DeleteArgs;

pub async fn run(args: &DeleteArgs) -> anyhow::Result<()> {
    let filter = args.filter.tuple_filter();
    let target = Target::one(args.netns.as_deref())?;
    let deleted = target
        .run(async |ct| ct.delete_matching(&filter).await)
        .await?
        .unwrap_or_default();
    eprintln!("ctscope: {} flow entries have been deleted.", deleted.len());
    // conntrack -D exits 1 when nothing matched; scripts rely on that.
    if deleted.is_empty() {
        bail!("no conntrack entry matched the filters");
    }
    Ok(())
}
