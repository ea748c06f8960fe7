//! `-h -p PROTO`: the protocol's option help conntrack prints after its usage
//! (extensions/libct_proto_*.c's help(), typos included).

use ct_netlink::proto;

use super::parse::ProtoKind;

const PORTS: &str = "  --orig-port-src\t\toriginal source port
  --orig-port-dst\t\toriginal destination port
  --reply-port-src\t\treply source port
  --reply-port-dst\t\treply destination port
  --mask-port-src\t\tmask source port
  --mask-port-dst\t\tmask destination port
  --tuple-port-src\t\texpectation tuple src port
  --tuple-port-src\t\texpectation tuple dst port
";

const GRE: &str = "  --orig-key-src\t\toriginal source key
  --orig-key-dst\t\toriginal destination key
  --reply-key-src\t\treply source key
  --reply-key-dst\t\treply destination key
  --mask-key-src\t\tmask source key
  --mask-key-dst\t\tmask destination key
  --tuple-key-src\t\texpectation tuple src key
  --tuple-key-src\t\texpectation tuple dst key
";

/// The help text for protocol number `num` handled by `kind`, with its
/// `Proto `NAME' help:` heading.
pub fn text(num: u8, kind: ProtoKind) -> String {
    // The "unknown" handler (also for a name from /etc/protocols) names the protocol
    // as getprotobynumber does.
    if kind == ProtoKind::Other {
        return unknown(num);
    }
    let (name, body) = match num {
        proto::TCP => (
            "tcp".to_owned(),
            format!("{PORTS}  --state\t\t\tTCP state, fe. ESTABLISHED\n"),
        ),
        proto::UDP | proto::UDPLITE => (proto::name(num).to_owned(), PORTS.to_owned()),
        proto::SCTP => (
            "sctp".to_owned(),
            format!(
                "{PORTS}  --state\t\t\tSCTP state, fe. ESTABLISHED\n\
                 \x20 --orig-vtag\t\toriginal verification tag\n\
                 \x20 --reply-vtag\t\treply verification tag\n"
            ),
        ),
        proto::DCCP => (
            "dccp".to_owned(),
            format!("{PORTS}  --state\t\t\tDCCP state, fe. RESPOND\n"),
        ),
        proto::GRE => ("gre".to_owned(), GRE.to_owned()),
        proto::ICMP | proto::ICMPV6 => {
            let n = proto::name(num);
            let body = ["type", "code", "id"]
                .map(|f| format!("  --{n}-{f}\t\t\t{n} {f}\n"))
                .concat();
            (n.to_owned(), body)
        }
        _ => return unknown(num),
    };
    format!("Proto `{name}' help:\n{body}")
}

fn unknown(num: u8) -> String {
    let name = system_name(num).unwrap_or_else(|| "unknown".to_owned());
    format!("Proto `{name}' help:\n  no options (unsupported)\n")
}

/// The protocol's name in /etc/protocols.
fn system_name(num: u8) -> Option<String> {
    let text = std::fs::read_to_string("/etc/protocols").ok()?;
    text.lines().find_map(|line| {
        let mut f = line.split('#').next()?.split_whitespace();
        let (name, n) = (f.next()?, f.next()?);
        (n.parse::<u8>().ok()? == num).then(|| name.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::ProtoKind;

    #[test]
    fn icmp_and_unknown() {
        assert_eq!(
            super::text(1, ProtoKind::Icmp),
            "Proto `icmp' help:\n  --icmp-type\t\t\ticmp type\n  --icmp-code\t\t\ticmp code\n  \
             --icmp-id\t\t\ticmp id\n"
        );
        assert!(super::text(250, ProtoKind::Other).ends_with("  no options (unsupported)\n"));
    }
}
