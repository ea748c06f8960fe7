//! `ctscope conntrack ARGS...`: a front end that accepts conntrack(8) 1.4.7's syntax
//! and behaves like it (text on stdout, the summary and errors on stderr with
//! conntrack's own prefix, the same exit statuses), over ct-netlink.
//!
//! Exit statuses, as conntrack's: 0 success; 1 an operation failed or (for -G, -D, -U,
//! -I) no entry was affected; 2 a parameter problem. What ctscope does not implement
//! (labels, XML, expectation creation, ...) fails with exit 2 and says so.

pub(crate) mod output;
pub mod parse;
mod run;

use std::process::ExitCode;

/// The version conntrack-tools reports; ctscope speaks its 1.4.7 dialect.
pub const VERSION: &str = "1.4.7";

/// The prefix conntrack puts before every message on stderr.
pub fn prefix() -> String {
    format!("conntrack v{VERSION} (conntrack-tools): ")
}

/// A failure, with conntrack's classification.
#[derive(Debug)]
pub enum Fail {
    /// PARAMETER_PROBLEM: exit 2, followed by the "Try `conntrack -h'" line.
    Param(String),
    /// OTHER_PROBLEM: exit 1.
    Other(String),
    /// Something conntrack accepts that ctscope does not implement: exit 2.
    Unsupported(String),
    /// Exit 1 after the summary was printed (nothing matched).
    Quiet,
}

impl Fail {
    pub fn exit_code(&self) -> i32 {
        match self {
            Fail::Param(_) | Fail::Unsupported(_) => 2,
            Fail::Other(_) | Fail::Quiet => 1,
        }
    }

    /// The message (without conntrack's prefix).
    pub fn message(&self) -> String {
        match self {
            Fail::Param(m) | Fail::Other(m) => m.clone(),
            Fail::Unsupported(what) => format!("ctscope conntrack does not support {what}"),
            Fail::Quiet => String::new(),
        }
    }

    fn report(&self) {
        if matches!(self, Fail::Quiet) {
            return;
        }
        eprintln!("{}{}", prefix(), self.message());
        if matches!(self, Fail::Param(_)) {
            eprintln!("Try `conntrack -h' or 'conntrack --help' for more information.");
        }
    }
}

/// Runs a conntrack command line (the arguments after `conntrack`).
pub fn main(args: &[String]) -> ExitCode {
    if args.len() > 1 && matches!(args[0].as_str(), "-R" | "--load-file") {
        let f = Fail::Unsupported("-R/--load-file (run one command per line)".into());
        f.report();
        return ExitCode::from(f.exit_code() as u8);
    }
    let result = parse::parse(args).and_then(|p| {
        for w in &p.warnings {
            eprintln!("{w}");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Fail::Other(format!("Can't open handler: {e}")))?;
        rt.block_on(run::run(&p))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            f.report();
            ExitCode::from(f.exit_code() as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    /// Everything after `conntrack` reaches the compat parser untouched, including
    /// `-h`, `-V` and options ctscope's clap definitions also have.
    #[test]
    fn raw_arguments_pass_through() {
        for line in [
            "ctscope conntrack -L -p tcp --dport 80 -o extended",
            "ctscope conntrack -h",
            "ctscope conntrack -V",
            "ctscope conntrack --netns x -L --json",
            "ctscope conntrack",
        ] {
            let argv: Vec<&str> = line.split_whitespace().collect();
            let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{line}: {e}"));
            let Command::Conntrack(args) = cli.command else {
                panic!("{line}: not conntrack")
            };
            assert_eq!(args.args, argv[2..], "{line}");
        }
    }
}
