//! The CLI's end of the socket: `list`, `get`, `stats` and `events` ask a running agent
//! first and fall back to ctnetlink or their own probes when none answers.

use std::{
    io::{self, Write as _},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
};

use super::protocol::{Header, Request};
use crate::sys::{netns::Tags, stdout};

/// An answer's body, after its header said ok.
pub type Body = BufReader<UnixStream>;

/// How long a client waits for the agent's answer to begin: a listing of millions of
/// rows renders in seconds; an agent that says nothing for this long is wedged.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends `request` to the agent at `path`. `Ok(None)` when no agent listens there; an
/// error when it does not begin to answer within [`ANSWER_TIMEOUT`].
pub async fn ask(path: &Path, request: &Request) -> anyhow::Result<Option<Body>> {
    ask_within(path, request, ANSWER_TIMEOUT).await
}

async fn ask_within(
    path: &Path,
    request: &Request,
    wait: Duration,
) -> anyhow::Result<Option<Body>> {
    match tokio::time::timeout(wait, ask_now(path, request)).await {
        Ok(answer) => answer,
        Err(_) => bail!(
            "the agent at {} did not answer within {} s (busy or wedged): pass --no-agent \
             to read the kernel directly",
            path.display(),
            wait.as_secs_f64()
        ),
    }
}

async fn ask_now(path: &Path, request: &Request) -> anyhow::Result<Option<Body>> {
    let mut stream = match UnixStream::connect(path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => bail!(
            "the agent's socket {} is root-only: run as root, or pass --no-agent to read the \
             kernel directly",
            path.display()
        ),
        Err(e) => bail!("connecting to the agent at {}: {e}", path.display()),
    };
    stream.write_all(&request.to_line()?).await?;
    let mut body = BufReader::new(stream);
    let mut header = String::new();
    body.read_line(&mut header).await?;
    let header: Header = serde_json::from_str(&header).map_err(|e| {
        anyhow::anyhow!(
            "the agent at {} sent no valid header ({e}); is it a ctscope agent?",
            path.display()
        )
    })?;
    if !header.ok {
        bail!("agent: {}", header.error.unwrap_or_default());
    }
    Ok(Some(body))
}

/// Reads a body of JSON Lines, one `T` per line.
pub async fn json_lines<T: serde::de::DeserializeOwned>(body: &mut Body) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::new();
    let mut line = String::new();
    while body.read_line(&mut line).await? > 0 {
        let item = serde_json::from_str(&line)
            .with_context(|| format!("the agent sent an unexpected line: {line:?}"))?;
        out.push(item);
        line.clear();
    }
    Ok(out)
}

/// Copies the body to stdout; returns how many lines it had. A closed stdout
/// (`ctscope list | head`) is [`stdout::Closed`].
pub async fn copy_lines(body: &mut Body) -> anyhow::Result<u64> {
    let mut out = stdout::writer();
    let mut lines = 0;
    loop {
        let chunk = body.fill_buf().await?;
        if chunk.is_empty() {
            break;
        }
        lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        let n = chunk.len();
        stdout::check(out.write_all(chunk))?;
        body.consume(n);
    }
    stdout::check(out.flush())?;
    Ok(lines)
}

/// Like [`copy_lines`], for JSON Lines: each object with a `netns` gets who is in that
/// namespace (names, workload), read once per namespace.
pub async fn copy_json_lines(body: &mut Body, tags: &mut Tags) -> anyhow::Result<u64> {
    let mut out = stdout::writer();
    let mut lines = 0;
    let mut line = Vec::new();
    while body.read_until(b'\n', &mut line).await? > 0 {
        let tagged = tags.add_to_line(&line).with_context(|| {
            format!(
                "the agent sent a line that is not JSON: {:?}",
                String::from_utf8_lossy(&line)
            )
        })?;
        stdout::check(out.write_all(&tagged))?;
        lines += 1;
        line.clear();
    }
    stdout::check(out.flush())?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wedged_agent_is_given_up_on_with_a_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        // Accepts and never answers, as an agent whose loop is stuck would.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let hold = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let err = ask_within(&path, &Request::Status {}, Duration::from_millis(200))
            .await
            .expect_err("no answer");
        assert!(err.to_string().contains("--no-agent"), "{err}");
        hold.abort();
    }
}
