//! The agent's config parser and validator against hostile input, by property
//! (10,000 cases; PROPTEST_CASES overrides): a valid config with one key set
//! to a random value, or random text appended, is either accepted or refused
//! with an error that names something; it never panics.

use dcwatt_agent::config::AgentConfig;
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    let n = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    ProptestConfig::with_cases(n)
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn agent_configs_never_panic(
        key in prop::sample::select(vec![
            "listen", "interval", "node", "url", "token_file", "timeout", "dir", "max_bytes",
            "fsync", "type", "meter", "library", "username", "password_file", "ca_file",
            "client_cert_file", "client_key_file", "unknown_key",
        ]),
        section in prop::sample::select(vec![
            "", "[[collectors]]\n", "[spool]\n", "[[sources]]\ntype = \"nvml\"\n",
            "[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\n", "[[sources]]\n",
        ]),
        raw in prop_oneof![
            Just("\"\"".to_owned()),
            Just("-1".to_owned()),
            Just("nan".to_owned()),
            Just("\"0s\"".to_owned()),
            Just("\"999999999y\"".to_owned()),
            Just("\"http://\"".to_owned()),
            Just("\"https://[::1\"".to_owned()),
            Just("\"/nonexistent/file\"".to_owned()),
            Just("[\"a\"]".to_owned()),
            any::<i64>().prop_map(|v| v.to_string()),
            "\"[ -~]{0,24}\"",
        ],
        junk in "\\PC{0,24}",
    ) {
        let dir = std::env::temp_dir();
        let base = format!("node = \"n1\"\n[spool]\ndir = \"{}\"\n", dir.join("dcwatt-fuzz-spool").display());
        for text in [
            format!("{key} = {raw}\n{base}"),
            format!("{base}{section}{key} = {raw}\n"),
            format!("{base}{junk}"),
        ] {
            match AgentConfig::from_toml(&text).and_then(AgentConfig::build) {
                Ok(_) => {}
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
