//! `ctscope conntrack`'s conntrack(8) command-line parser on any argument list: NUL
//! separates the arguments, each taken as (lossy) UTF-8 as clap would pass it.
#![no_main]

use ctscope::compat::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args: Vec<String> = data
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // Errors are printed: their text is part of what runs on any input.
    if let Err(fail) = parse::parse(&args) {
        let _ = (fail.message(), fail.exit_code());
    }
});
