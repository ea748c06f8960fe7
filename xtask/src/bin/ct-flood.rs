//! `ct-flood`: the sender of `cargo xtask bench`. Creates N new UDP flows as fast as one
//! thread can: one unconnected socket bound to `--src`, `sendmmsg` batches of one small
//! datagram per flow, flow `i` going to port `1 + i % 65535` of address `--dst + i / 65535`,
//! so that every datagram is a new conntrack entry. Run it inside the client namespace
//! (`ip netns exec NS ct-flood ...`); it prints one JSON object:
//! `{flows, sent, send_errors, first_error, seconds, rate, batch}` (`rate` is flows/s).
use std::{
    ffi::c_void,
    io, mem,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd as _,
    process::ExitCode,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use serde_json::json;

/// Destination ports per destination address (port 0 is not used).
const PORTS_PER_ADDR: u64 = 65_535;
/// The datagram every flow carries.
const PAYLOAD: &[u8] = b"ctscope!";

#[derive(Parser)]
#[command(about = "Send one UDP datagram per new flow, as fast as one thread can")]
struct Cli {
    /// Address and port the one socket binds to.
    #[arg(long)]
    src: SocketAddrV4,
    /// First destination address; every 65535 flows use the next one.
    #[arg(long)]
    dst: Ipv4Addr,
    /// Number of flows (datagrams).
    #[arg(long)]
    flows: u64,
    /// Datagrams per sendmmsg call.
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

fn main() -> ExitCode {
    match run(&Cli::parse()) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ct-flood: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<serde_json::Value> {
    if cli.batch == 0 || cli.batch > 1024 {
        bail!("--batch must be 1..=1024");
    }
    let addrs = destinations(cli.dst, cli.flows)?;
    let socket = UdpSocket::bind(cli.src).with_context(|| format!("bind {}", cli.src))?;
    let fd = socket.as_raw_fd();

    // The kernel only reads the iovec and the addresses; every message shares the payload.
    let mut iov = libc::iovec {
        iov_base: PAYLOAD.as_ptr() as *mut c_void,
        iov_len: PAYLOAD.len(),
    };
    let iov_ptr: *mut libc::iovec = &mut iov;
    // SAFETY: mmsghdr is plain old data; all-zero is a valid (empty) value.
    let mut msgs: Vec<libc::mmsghdr> = vec![unsafe { mem::zeroed() }; cli.batch];
    for m in &mut msgs {
        m.msg_hdr.msg_iov = iov_ptr;
        m.msg_hdr.msg_iovlen = 1;
        m.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    }

    let mut next = 0;
    let mut sent = 0u64;
    let mut errors = 0u64;
    let mut first_error: Option<String> = None;
    let start = Instant::now();
    while next < addrs.len() {
        let n = cli.batch.min(addrs.len() - next);
        for (m, a) in msgs.iter_mut().zip(&addrs[next..next + n]) {
            m.msg_hdr.msg_name = a as *const libc::sockaddr_in as *mut c_void;
        }
        // SAFETY: `msgs[..n]` point at live addresses, the iovec and the static payload.
        let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as libc::c_uint, 0) };
        if r < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // The first datagram of the batch failed (EPERM: netfilter dropped it, e.g. a
            // full table). Count it and go on with the next one.
            errors += 1;
            first_error.get_or_insert_with(|| err.to_string());
            next += 1;
        } else {
            sent += r as u64;
            next += r as usize;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(json!({
        "flows": cli.flows,
        "sent": sent,
        "send_errors": errors,
        "first_error": first_error,
        "seconds": seconds,
        "rate": cli.flows as f64 / seconds,
        "batch": cli.batch,
    }))
}

/// One destination per flow, built before the clock starts.
fn destinations(first: Ipv4Addr, flows: u64) -> Result<Vec<libc::sockaddr_in>> {
    let base = u32::from(first);
    let last = u64::from(base) + flows.saturating_sub(1) / PORTS_PER_ADDR;
    if last > u64::from(u32::MAX) {
        bail!("{flows} flows need more destination addresses than follow {first}");
    }
    Ok((0..flows)
        .map(|i| {
            let addr = base + (i / PORTS_PER_ADDR) as u32;
            let port = 1 + (i % PORTS_PER_ADDR) as u16;
            libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: addr.to_be(),
                },
                sin_zero: [0; 8],
            }
        })
        .collect())
}
