//! A real Prometheus (Debian's `prometheus`) scraping one target on loopback every second,
//! its storage in a temporary directory, stopped on drop; queries through its HTTP API;
//! and the plain HTTP GETs the tests make of it and of the agent's `/metrics`.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tempfile::TempDir;

use crate::{cmd, wait};

/// The job name the agent is scraped under.
pub const JOB: &str = "ctscope";

/// Why Prometheus cannot run here, if it cannot.
pub fn missing() -> Option<String> {
    missing_of(&["prometheus", "promtool"])
}

/// Why `promtool` (rule checks and tests, no server) cannot run here, if it cannot.
pub fn promtool_missing() -> Option<String> {
    missing_of(&["promtool"])
}

fn missing_of(tools: &[&'static str]) -> Option<String> {
    let absent: Vec<&str> = tools.iter().copied().filter(|t| !cmd::on_path(t)).collect();
    (!absent.is_empty()).then(|| {
        format!(
            "no {} on PATH (Debian's `prometheus` package; `cargo xtask setup` installs it)",
            absent.join(", ")
        )
    })
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    l.local_addr().expect("its address").port()
}

/// A running Prometheus, killed on drop.
pub struct Prometheus {
    child: Child,
    dir: TempDir,
    addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`/metrics`) every second on a free loopback
    /// port, and waits until it is ready.
    pub fn start(target: SocketAddr) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ctscope-prometheus-")
            .tempdir()
            .expect("prometheus dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n"
            ),
        )
        .expect("writing prometheus.yml");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("log")).expect("prometheus log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run prometheus: {e}"));
        let mut p = Prometheus { child, dir, addr };
        let ready = wait::poll(Duration::from_secs(60), Duration::from_millis(200), || {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", p.log());
            }
            get(p.addr, "/-/ready", None)
                .ok()
                .filter(|r| r.status == 200)
        });
        assert!(ready.is_some(), "prometheus not ready:\n{}", p.log());
        p
    }

    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// An instant query: each series' labels and value.
    pub fn query(&self, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let r = get(self.addr, &path, None).unwrap_or_else(|e| panic!("querying {expr}: {e}"));
        let v: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{expr}: not JSON ({e}): {}", r.body));
        assert_eq!(v["status"], "success", "{expr}: {v}");
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        result
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{expr}: no value in {s}"));
                (labels, value)
            })
            .collect()
    }

    /// The values of `label` (on the series `selector` selects, or on every series).
    pub fn label_values(&self, label: &str, selector: Option<&str>) -> Vec<String> {
        let matching = selector.map_or(String::new(), |s| {
            format!("?{}={}", percent_encode("match[]"), percent_encode(s))
        });
        let path = format!("/api/v1/label/{label}/values{matching}");
        let r = get(self.addr, &path, None).unwrap_or_else(|e| panic!("asking {path}: {e}"));
        let v: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", r.body));
        assert_eq!(v["status"], "success", "{path}: {v}");
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_owned))
            .collect()
    }

    /// The value of a query that selects one series; `None` when it selects none.
    pub fn value(&self, expr: &str) -> Option<f64> {
        let series = self.query(expr);
        assert!(series.len() <= 1, "{expr} selects {series:?}");
        series.first().map(|s| s.1)
    }

    /// Waits until the target's last scrape succeeded (`up` is 1); panics with the
    /// target's last error otherwise.
    pub fn wait_up(&self) {
        let up = format!("up{{job=\"{JOB}\"}}");
        let done = wait::poll(Duration::from_secs(30), Duration::from_millis(250), || {
            (self.value(&up) == Some(1.0)).then_some(())
        });
        if done.is_none() {
            let targets = get(self.addr, "/api/v1/targets", None).map(|r| r.body);
            panic!("prometheus never scraped the agent: {targets:?}");
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `GET path` on `addr` with `Accept: accept` when given. HTTP/1.0, so the server closes
/// the connection after a body that is neither chunked nor kept alive.
pub fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{accept}\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status line in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// `s` for a URL query value: everything but unreserved characters percent-encoded.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(
            super::percent_encode("up{job=\"a b\"}"),
            "up%7Bjob%3D%22a%20b%22%7D"
        );
    }
}
