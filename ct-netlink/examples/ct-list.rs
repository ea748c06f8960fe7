//! Print the conntrack table as JSON lines: `ct-list [NETNS_NAME_OR_PATH]`.

use ct_netlink::{Conntrack, netns_path};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("ct-list: {e}");
        std::process::exit(1);
    }
}

async fn run() -> ct_netlink::Result<()> {
    let mut ct = match std::env::args().nth(1) {
        Some(ns) => Conntrack::open_in_netns(netns_path(&ns))?,
        None => Conntrack::open()?,
    };
    for e in ct.dump(None).await? {
        println!("{}", serde_json::to_string(&e).expect("entries serialize"));
    }
    eprintln!(
        "{} entries, {:?}",
        ct.count().await?,
        ct.stats_global().await?
    );
    Ok(())
}
