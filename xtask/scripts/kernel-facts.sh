# What a VM kernel offers ctscope, and a conntrack smoke test:
#   cargo xtask vm-run --kernel 6.12 --script xtask/scripts/kernel-facts.sh
# Runs as root inside the VM (bash as sh; ip, nft, conntrack and ctscope on PATH).
set -u
echo "== uname -r: $(uname -r)"
for f in /sys/kernel/btf/vmlinux /sys/kernel/btf/nf_conntrack /sys/kernel/tracing/kprobe_events; do
    if [ -e "$f" ]; then echo "== $f exists"; else echo "== $f MISSING"; fi
done
# A module's symbols are followed by a TAB and "[module]", hence [[:space:]].
echo "== conntrack functions in /proc/kallsyms:"
grep -E ' (__nf_conntrack_confirm|nf_ct_resolve_clash|__nf_conntrack_alloc|early_drop|nf_ct_delete|nf_conntrack_free|nf_conntrack_hash_check_insert|gc_worker|nf_conntrack_cleanup_net_list|nf_ct_iterate_cleanup_net|nf_ct_iterate_cleanup|nf_ct_kill_acct)(\.[a-z]+\.[0-9]+)?([[:space:]]|$)' /proc/kallsyms
echo "== $(grep CONFIG_HZ= /boot/config-*)"
echo "== modules: $(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"

echo "== conntrack in a network namespace"
ip netns add facts || exit 10
ip netns exec facts bash -c '
set -e
ip link set lo up
nft add table inet t
nft add chain inet t c "{ type filter hook output priority 0; }"
nft add rule inet t c ct state new counter
ping -c 1 -W 2 127.0.0.1 >/dev/null && echo "ping ok"
echo hello > /dev/udp/127.0.0.1/5353 && echo "udp sent"
conntrack -L
conntrack -S
' || exit 11
ip netns del facts
echo "== ctscope probe"
ctscope probe
