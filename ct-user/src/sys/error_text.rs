//! How an error chain reads on one line: each message once, joined by ": ".
//!
//! Many errors repeat their source in their own message (`"{name}: {source}"` with the
//! source also marked `#[source]`), so printing every cause gives "Invalid argument (os
//! error 22): Invalid argument (os error 22)". A cause whose text the previous message
//! already contains is skipped.

use std::error::Error;

/// `e` and its causes, each said once.
pub fn render(e: &(dyn Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut said = out.clone();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !said.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        said = text;
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("opening ctnetlink: {0}")]
    struct Repeats(#[source] io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("opening ctnetlink")]
    struct Wraps(#[source] io::Error);

    #[test]
    fn a_repeated_cause_is_said_once() {
        let e = Repeats(io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(
            render(&e),
            "opening ctnetlink: Invalid argument (os error 22)"
        );
        let e = anyhow::Error::new(e).context("network namespace \"x\"");
        assert_eq!(
            render(e.as_ref()),
            "network namespace \"x\": opening ctnetlink: Invalid argument (os error 22)"
        );
    }

    #[test]
    fn distinct_causes_are_all_said() {
        let e = Wraps(io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(
            render(&e),
            "opening ctnetlink: Operation not permitted (os error 1)"
        );
        let e = anyhow::anyhow!("plain");
        assert_eq!(render(e.as_ref()), "plain");
    }

    /// Only the message just before counts: a cause repeated further down the chain,
    /// after a different message, is still said.
    #[test]
    fn only_the_previous_message_is_compared() {
        let e = anyhow::Error::new(Wraps(io::Error::from_raw_os_error(libc::EINVAL)))
            .context("Invalid argument (os error 22) in the config");
        assert_eq!(
            render(e.as_ref()),
            "Invalid argument (os error 22) in the config: opening ctnetlink: Invalid \
             argument (os error 22)"
        );
    }
}
