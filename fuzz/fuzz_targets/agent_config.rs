//! The agent's configuration loader on arbitrary text: loaded, or refused with an error naming
//! the key; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(error) =
            duban_agent::config::AgentConfig::parse(text, std::path::Path::new("/etc/duban/agent.toml"))
        {
            let _ = error.to_string();
        }
    }
});
