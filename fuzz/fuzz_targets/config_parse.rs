//! Fuzz target: the TOML configuration parser and validator. Any bytes give a
//! `Config` or a one-line `ConfigError`, never a panic, and an error never
//! spans several lines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Err(e) = ovfs::config::Config::parse(text) {
        let line = e.to_string();
        assert!(!line.contains('\n'), "multi-line config error: {line:?}");
    }
});
