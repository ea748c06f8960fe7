//! The agent's socket protocol: one request line, parsed as the agent parses it. A request
//! that parses must serialize and parse back to the same thing (clients build requests by
//! serializing them).
#![no_main]

use ctscope::agent::protocol::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The agent reads a line into a String: not UTF-8 is a read error before parsing.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(request) = parse_request(line) else {
        return;
    };
    let json = serde_json::to_string(&request).expect("a parsed request serializes");
    let again = parse_request(&json).expect("a serialized request parses");
    assert_eq!(serde_json::to_string(&again).unwrap(), json, "round trip");
});
