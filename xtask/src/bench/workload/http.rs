//! `--workload http`: wrk in a client namespace → a NAT namespace that forwards and
//! masquerades (conntrack runs there, as on a NAT gateway) → nginx in a server namespace.
//! Every request is its own TCP connection (`Connection: close`), hence a new entry.
//!
//! 10.200.90.0/24 joins client (.1) and NAT (.2); 10.200.91.0/24 joins NAT (.1) and
//! server (.2). nginx runs with a configuration and prefix of its own in the bench's
//! temporary directory, never the system's service.

use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};
use ctscope_tests::netns::Netns;

use crate::cmd;

use super::super::Sender;
use super::{count_created, daemon::Daemon, veth};

const CLIENT_ADDR: &str = "10.200.90.1";
const NAT_INNER: &str = "10.200.90.2";
const NAT_OUTER: &str = "10.200.91.1";
const SERVER_ADDR: &str = "10.200.91.2";
/// Connections wrk keeps open at once (each closed after its one request).
const CONNECTIONS: u32 = 32;
/// One wrk thread: the machine's other CPU is left to nginx.
const THREADS: u32 = 1;
/// The client's ephemeral ports: all of them, so a port comes back as late as it can.
const PORT_RANGE: &str = "1024 65535";

pub(in super::super) struct Http {
    // Declared first, dropped first: nginx dies before its namespace goes.
    nginx: Daemon,
    client: Netns,
    nat: Netns,
    _server: Netns,
}

impl Http {
    pub(super) fn new(dir: &Path) -> Result<Http> {
        let (client, nat, server) = (Netns::new(), Netns::new(), Netns::new());
        veth(
            (&client, "bench0", CLIENT_ADDR),
            (&nat, "bench1", NAT_INNER),
        )?;
        veth(
            (&nat, "bench2", NAT_OUTER),
            (&server, "bench3", SERVER_ADDR),
        )?;
        cmd::run(
            client
                .command("ip")
                .args(["route", "add", "default", "via", NAT_INNER]),
        )?;
        client.sysctl("net.ipv4.ip_local_port_range", PORT_RANGE);
        nat.sysctl("net.ipv4.ip_forward", "1");
        cmd::run(nat.command("nft").arg(format!(
            "add table ip ctbench; \
             add chain ip ctbench nat {{ type nat hook postrouting priority srcnat; }}; \
             add rule ip ctbench nat oifname bench2 masquerade; {}",
            count_created("postrouting")
        )))?;
        let nginx = start_nginx(&server, &dir.join("nginx"))?;
        Ok(Http {
            nginx,
            client,
            nat,
            _server: server,
        })
    }

    pub(super) fn conntrack_ns(&self) -> &Netns {
        &self.nat
    }

    pub(super) fn drive(&self, seconds: u32, echo: bool) -> Result<Sender> {
        self.nginx.check()?;
        let mut wrk = self.client.command("wrk");
        wrk.args([
            &format!("-t{THREADS}"),
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "-H",
            "Connection: close",
            &format!("http://{SERVER_ADDR}/"),
        ]);
        if echo {
            eprintln!("$ {}", cmd::show(&wrk));
        }
        parse_wrk(&cmd::output(&mut wrk)?)
    }
}

pub(super) fn describe(seconds: u32) -> String {
    format!(
        "HTTP: wrk ({THREADS} thread, {CONNECTIONS} connections, `Connection: close`) → \
         masquerading NAT namespace (conntrack) → nginx, {seconds} s per run, one TCP \
         connection per request"
    )
}

/// nginx in `server`'s namespace, everything it writes under `prefix`: one process
/// (no master), no access log, a fixed 200 answer.
fn start_nginx(server: &Netns, prefix: &Path) -> Result<Daemon> {
    fs::create_dir_all(prefix.join("temp"))
        .with_context(|| format!("creating {}", prefix.display()))?;
    let p = prefix.display();
    let conf = format!(
        "daemon off;\n\
         master_process off;\n\
         worker_processes 1;\n\
         pid {p}/nginx.pid;\n\
         error_log {p}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 client_body_temp_path {p}/temp/body;\n\
         \x20 proxy_temp_path {p}/temp/proxy;\n\
         \x20 fastcgi_temp_path {p}/temp/fastcgi;\n\
         \x20 uwsgi_temp_path {p}/temp/uwsgi;\n\
         \x20 scgi_temp_path {p}/temp/scgi;\n\
         \x20 server {{\n\
         \x20   listen {SERVER_ADDR}:80 backlog=4096;\n\
         \x20   location / {{ return 200 \"ctscope bench\\n\"; }}\n\
         \x20 }}\n\
         }}\n"
    );
    let path = prefix.join("nginx.conf");
    fs::write(&path, conf).with_context(|| format!("writing {}", path.display()))?;
    let mut nginx = server.command("nginx");
    // -e: the error log before the configuration is read (else /var/log/nginx).
    nginx
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(prefix.join("error.log"));
    Daemon::start("nginx", nginx, &prefix.join("output.log"), server, 't', 80)
}

/// wrk's report: `N requests in 10.00s`, `Requests/sec: R`, and the errors it counts
/// (`Socket errors: connect A, read B, write C, timeout D`, `Non-2xx or 3xx responses: E`).
fn parse_wrk(out: &str) -> Result<Sender> {
    let after = |key: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
    };
    let requests: u64 = out
        .lines()
        .find_map(|l| l.trim().split_once(" requests in "))
        .and_then(|(n, _)| n.trim().parse().ok())
        .with_context(|| format!("no `N requests in` in wrk's output: {out:?}"))?;
    let rate: f64 = after("Requests/sec:")
        .and_then(|r| r.parse().ok())
        .with_context(|| format!("no `Requests/sec:` in wrk's output: {out:?}"))?;
    let socket_errors: u64 = after("Socket errors:")
        .map(|e| {
            e.split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let bad_status: u64 = after("Non-2xx or 3xx responses:")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if requests == 0 || rate <= 0.0 {
        bail!("wrk made no requests: {out:?}");
    }
    let first_error = [("Socket errors:", socket_errors), ("Non-2xx", bad_status)]
        .iter()
        .filter(|(_, n)| *n > 0)
        .find_map(|(key, _)| out.lines().map(str::trim).find(|l| l.starts_with(key)))
        .map(str::to_owned);
    Ok(Sender {
        flows: requests,
        sent: requests,
        send_errors: socket_errors + bad_status,
        first_error,
        seconds: requests as f64 / rate,
        rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "Running 3s test @ http://10.200.91.2/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.32ms    3.39ms  35.99ms   86.92%
    Req/Sec     4.91k     1.01k    7.80k    76.67%
  14939 requests in 3.07s, 2.24MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 1
Requests/sec:   4870.55
Transfer/sec:    746.75KB
";

    #[test]
    fn reads_requests_rate_and_errors_from_wrk() {
        let s = parse_wrk(OUT).unwrap();
        assert_eq!(s.sent, 14939);
        assert!((s.rate - 4870.55).abs() < 1e-9);
        assert_eq!(s.send_errors, 6);
        assert_eq!(
            s.first_error.as_deref(),
            Some("Socket errors: connect 0, read 3, write 0, timeout 2")
        );
        let clean = OUT
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse_wrk(&clean).unwrap().send_errors, 0);
    }

    #[test]
    fn output_without_requests_is_an_error() {
        assert!(parse_wrk("unable to connect to 10.200.91.2:80 Connection refused").is_err());
    }
}
