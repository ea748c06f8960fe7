//! ct-netlink's decoders on one received datagram: netlink framing, conntrack entries
//! (dump replies and events), expectations and statistics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(messages) = ct_netlink::decode_datagram(data) {
        for m in messages {
            // Serializing walks every decoded field, as `list --json` and `events` do.
            if let ct_netlink::Message::Entry(e) = m {
                let _ = serde_json::to_string(&e);
                let _ = e.label_bits();
                let _ = e.status.names();
            }
        }
    }
});
