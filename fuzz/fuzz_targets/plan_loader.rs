//! The plan loader on arbitrary text: every plan file an office can write is either loaded or
//! refused with its errors; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match duban_aggregator::plan::load_str(text, "fuzz.toml") {
            Ok(loaded) => {
                let _ = loaded.plan.reporting_units();
            }
            Err(errors) => {
                let _ = errors.to_string();
            }
        }
    }
});
