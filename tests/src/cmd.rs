//! Running external tools (`ip`, `nft`, `conntrack`) with clear failures.

use std::{
    io::Write,
    process::{Command, Output, Stdio},
};

/// Runs `argv`, returning its output whatever the exit status.
pub fn output(argv: &[&str], stdin: Option<&str>) -> std::io::Result<Output> {
    let (prog, args) = argv.split_first().expect("empty command line");
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        // Dropping the handle closes the pipe so the tool sees EOF.
        let mut pipe = child.stdin.take().expect("stdin was piped");
        pipe.write_all(input.as_bytes())?;
    }
    child.wait_with_output()
}

/// Runs `argv` and returns its stdout; panics with the tool's stderr when it fails.
pub fn run(argv: &[&str]) -> String {
    run_with_input(argv, None)
}

/// Like [`run`], feeding `stdin` to the tool.
pub fn run_with_input(argv: &[&str], stdin: Option<&str>) -> String {
    let out = output(argv, stdin).unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `prog` is an executable on PATH (or a path that exists).
pub fn on_path(prog: &str) -> bool {
    find_on_path(prog).is_some()
}

/// The full path of `prog` on PATH.
pub fn find_on_path(prog: &str) -> Option<std::path::PathBuf> {
    if prog.contains('/') {
        let p = std::path::PathBuf::from(prog);
        return p.exists().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(prog))
        .find(|p| p.is_file())
}
