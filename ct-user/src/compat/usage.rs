//! conntrack's `-h` text.

/// conntrack -h.
pub(super) fn usage() -> String {
    format!(
        "Command line interface for the connection tracking system. Version {}\n\
Usage: conntrack [commands] [options]\n\
\n\
Commands:\n\
\x20 -L [table] [options]\t\tList conntrack or expectation table\n\
\x20 -G [table] parameters\t\tGet conntrack or expectation\n\
\x20 -D [table] parameters\t\tDelete conntrack or expectation\n\
\x20 -I [table] parameters\t\tCreate a conntrack or expectation\n\
\x20 -U [table] parameters\t\tUpdate a conntrack\n\
\x20 -E [table] [options]\t\tShow events\n\
\x20 -F [table]\t\t\tFlush table\n\
\x20 -C [table]\t\t\tShow counter\n\
\x20 -S\t\t\t\tShow statistics\n\
\n\
Tables: conntrack, expect, dying, unconfirmed\n\
\n\
Conntrack parameters and options:\n\
\x20 -n, --src-nat ip\t\t\tsource NAT ip\n\
\x20 -g, --dst-nat ip\t\t\tdestination NAT ip\n\
\x20 -j, --any-nat ip\t\t\tsource or destination NAT ip\n\
\x20 -m, --mark mark\t\t\tSet mark\n\
\x20 -c, --secmark secmark\t\t\tSet selinux secmark\n\
\x20 -e, --event-mask eventmask\t\tEvent mask, eg. NEW,DESTROY\n\
\x20 -z, --zero \t\t\t\tZero counters while listing\n\
\x20 -o, --output type[,...]\t\tOutput format, eg. xml\n\
\x20 -l, --label label[,...]\t\tconntrack labels\n\
\n\
Expectation parameters and options:\n\
\x20 --tuple-src ip\tSource address in expect tuple\n\
\x20 --tuple-dst ip\tDestination address in expect tuple\n\
\n\
Updating parameters and options:\n\
\x20 --label-add label\tAdd label\n\
\x20 --label-del label\tDelete label\n\
\n\
Common parameters and options:\n\
\x20 -s, --src, --orig-src ip\t\tSource address from original direction\n\
\x20 -d, --dst, --orig-dst ip\t\tDestination address from original direction\n\
\x20 -r, --reply-src ip\t\tSource addres from reply direction\n\
\x20 -q, --reply-dst ip\t\tDestination address from reply direction\n\
\x20 -p, --protonum proto\t\tLayer 4 Protocol, eg. 'tcp'\n\
\x20 -f, --family proto\t\tLayer 3 Protocol, eg. 'ipv6'\n\
\x20 -t, --timeout timeout\t\tSet timeout\n\
\x20 -u, --status status\t\tSet status, eg. ASSURED\n\
\x20 -w, --zone value\t\tSet conntrack zone\n\
\x20 --orig-zone value\t\tSet zone for original direction\n\
\x20 --reply-zone value\t\tSet zone for reply direction\n\
\x20 -b, --buffer-size\t\tNetlink socket buffer size\n\
\x20 --mask-src ip\t\t\tSource mask address\n\
\x20 --mask-dst ip\t\t\tDestination mask address\n\
\n",
        super::VERSION
    )
}
