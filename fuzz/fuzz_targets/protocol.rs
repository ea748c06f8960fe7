//! The agent's socket protocol: one request line, parsed as the agent parses it. A request
//! that parses must serialize and parse back to the same line (clients build requests by
//! serializing them).
#![no_main]

use ctscope::agent::protocol::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = Request::parse(data) else {
        return;
    };
    let line = request.to_line().expect("a parsed request serializes");
    let again = Request::parse(&line).expect("a serialized request parses");
    assert_eq!(again.to_line().unwrap(), line, "round trip");
});
