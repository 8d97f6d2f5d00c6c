//! Config parsing and validation: any text gives a config or a list of
//! errors, each with a path; never a panic. Run it without a network
//! (`unshare -n`): addresses with host names are resolved.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    match relay_edge::config::parse(text) {
        Ok(config) => assert!(!config.listeners.is_empty()),
        Err(e) => assert!(!e.lines().is_empty()),
    }
});
