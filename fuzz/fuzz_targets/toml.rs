//! Fuzzes the toml reader: see `readers::toml` for the input's layout and what is checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../readers.rs"]
#[allow(dead_code)]
mod readers;

fuzz_target!(|data: &[u8]| {
    let _ = readers::toml(data);
});
