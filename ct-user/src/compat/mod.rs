//! `ctscope conntrack ARGS...`: a front end that accepts conntrack(8) 1.4.7's syntax
//! and behaves like it (text on stdout, the summary and errors on stderr with
//! conntrack's own prefix, the same exit statuses), over ct-netlink.
//!
//! Exit statuses, as conntrack's: 0 success; 1 an operation failed or (for -G, -D, -U,
//! -I) no entry was affected; 2 a parameter problem. What ctscope does not implement
//! (expectation creation and events, expectation tuples, ...) fails with exit 2 and
//! says so.

mod filter;
mod getopt;
mod labels;
mod legality;
mod options;
pub(crate) mod output;
pub mod parse;
mod proto_help;
mod proto_opts;
mod request;
mod run;
mod usage;
mod values;

use std::{io::Write as _, process::ExitCode};

use crate::sys::stdout::CStdout;

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

/// A parameter problem (conntrack's PARAMETER_PROBLEM).
fn param(msg: impl Into<String>) -> Fail {
    Fail::Param(msg.into())
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

/// conntrack dies of SIGPIPE when its stdout is closed (status 141 in a shell, nothing
/// on stderr); Rust ignores the signal, so put the default back to do the same.
fn die_on_sigpipe() {
    // SAFETY: installs the default disposition, no handler; no other thread runs yet.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

fn runtime() -> Result<tokio::runtime::Runtime, Fail> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fail::Other(format!("Can't open handler: {e}")))
}

/// Runs a conntrack command line (the arguments after `conntrack`).
pub fn main(args: &[String]) -> ExitCode {
    die_on_sigpipe();
    // ctscope's `--netns NS` may come first, also before -R.
    let (netns, rest) = match args {
        [flag, ns, rest @ ..] if flag == "--netns" => (Some(ns.clone()), rest),
        [flag, rest @ ..] if flag.starts_with("--netns=") => {
            (Some(flag["--netns=".len()..].to_owned()), rest)
        }
        _ => (None, args),
    };
    // conntrack takes -R only as the first argument and with a file after it; anything
    // after the file is ignored.
    let mut out = CStdout::new();
    let result = if rest.len() > 1 && matches!(rest[0].as_str(), "-R" | "--load-file") {
        load_file(&rest[1], netns, &mut out)
    } else {
        parse_warned(args).and_then(|p| runtime()?.block_on(run::run(&p, &mut out)))
    };
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            f.report();
            ExitCode::from(f.exit_code() as u8)
        }
    };
    // conntrack's exit flushes stdout after its messages on stderr: a closed pipe kills
    // it here, with its summary already said.
    let _ = out.flush();
    code
}

/// Parses a command line, printing conntrack's warnings on stderr as it would: also
/// those met before a parameter problem.
fn parse_warned(args: &[String]) -> Result<parse::Parsed, Fail> {
    let (p, result) = parse::parse_partial(args);
    for w in &p.warnings {
        eprintln!("{w}");
    }
    result.map(|()| p)
}

/// `-R FILE` (`-` for stdin): every line is a conntrack command line; all are parsed
/// first (a parameter problem stops before anything runs), only -I, -A, -U, -D and -F
/// are allowed, then they run in order without summaries; the first failed operation
/// stops with its error.
fn load_file(name: &str, netns: Option<String>, out: &mut CStdout) -> Result<(), Fail> {
    let name = if name == "-" { "/dev/stdin" } else { name };
    let text = std::fs::read(name)
        .map_err(|_| Fail::Param(format!("Failed to open file {name} for reading")))?;
    let text = String::from_utf8_lossy(&text);
    let mut cmds = Vec::new();
    // conntrack's output flags are global: each line adds to them.
    let mut output = 0;
    for line in text.split_inclusive('\n') {
        let line = line.trim_start_matches([' ', '\t']);
        if line.is_empty() || line.starts_with('\n') || line.starts_with('#') {
            continue;
        }
        let mut p = parse_warned(&split_line(line))?;
        output |= p.output;
        p.output = output;
        p.batch = true;
        if p.netns.is_none() {
            p.netns.clone_from(&netns);
        }
        cmds.push(p);
    }
    use parse::Cmd;
    for p in &cmds {
        let allowed = matches!(
            p.cmd,
            Some(Cmd::Create | Cmd::Add | Cmd::Update | Cmd::Delete | Cmd::Flush)
        );
        if !allowed {
            let what = match p.cmd {
                _ if p.no_command => "unknown",
                Some(Cmd::List) => "-L",
                Some(Cmd::Get) => "-G",
                Some(Cmd::Event) => "-E",
                Some(Cmd::Version) => "-V",
                Some(Cmd::Help) => "-h",
                Some(Cmd::ExpList) => "-L expect",
                Some(Cmd::ExpCreate | Cmd::ExpCount) => "-C expect",
                Some(Cmd::ExpDelete) => "-D expect",
                Some(Cmd::ExpGet) => "-G expect",
                Some(Cmd::ExpFlush) => "-F expect",
                Some(Cmd::ExpEvent) => "-E expect",
                Some(Cmd::Count) => "-C",
                Some(Cmd::Stats) => "-S",
                Some(Cmd::ExpStats) => "-S expect",
                _ => "unknown",
            };
            return Err(Fail::Param(format!(
                "Cannot use command `{what}' with --load-file"
            )));
        }
    }
    let rt = runtime()?;
    for p in &cmds {
        rt.block_on(run::run(p, out))?;
    }
    Ok(())
}

/// One load-file line as argv, like conntrack's add_param_to_argv: blanks separate
/// words; inside double quotes blanks are kept and a backslash escapes the next
/// character; a closing quote ends the word.
fn split_line(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in line.chars() {
        if quoted {
            if escaped {
                word.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                // The closing quote ends the word, even an empty one.
                quoted = false;
                words.push(std::mem::take(&mut word));
            } else {
                word.push(c);
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ' ' | '\t' | '\n' => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    #[test]
    fn load_file_words() {
        assert_eq!(
            super::split_line("-I  -t 5\t-p \"u\\\"dp\"\n"),
            ["-I", "-t", "5", "-p", "u\"dp"]
        );
    }

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
