//! `ctscope flush`: delete every entry (of one family), like `conntrack -F`.

use super::Target;
use crate::cli::FlushArgs;

pub async fn run(args: &FlushArgs) -> anyhow::Result<()> {
    let family = args.family.map(Into::into);
    let target = Target::one(args.netns.as_deref())?;
    target.run(async |ct| ct.flush(family).await).await?;
    eprintln!("ctscope: connection tracking table has been emptied.");
    Ok(())
}
