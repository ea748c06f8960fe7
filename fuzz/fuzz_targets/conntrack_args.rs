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
    match parse::parse(&args) {
        Ok(parsed) => drop(parsed),
        Err(fail) => {
            let _ = (fail.message(), fail.exit_code());
        }
    }
});
