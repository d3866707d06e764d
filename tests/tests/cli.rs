//! The binaries' `--check-config`: a bad config names the key and the reason
//! and exits 2; a good one prints `ok`.

use std::process::Command;

use dcwatt_sim::launch::bin_dir;

fn check(bin: &str, text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin_dir().join(bin))
        .arg("--check-config")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{bin}: {e} (build the workspace first)"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

#[test]
fn collector_check_config() {
    assert_eq!(
        check("dcwatt-collector", "listen = \"127.0.0.1:9400\"\n").0,
        0
    );
    // A meter no agent may report: valid, with a warning naming it.
    let (code, said) = check(
        "dcwatt-collector",
        "[[meters]]\nid = \"utility\"\nrole = \"facility\"\n[[agents]]\nid = \"n1\"\ntoken_sha256 = \"0000000000000000000000000000000000000000000000000000000000000001\"\n",
    );
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("warning: meter \"utility\" is listed in no agent's `meters`"),
        "{said}"
    );
    let cases = [
        (
            "[[meters]]\nid = \"pdu-1\"\nrole = \"it\"\n",
            "meters[0].it_point",
        ),
        ("[[meters]]\nid = \"pdu-1\"\nrole = \"heater\"\n", "heater"),
        ("stale_after = \"forever\"\n", "stale_after"),
        (
            "[[agents]]\nid = \"n1\"\ntoken_sha256 = \"abc\"\n",
            "agents[0].token_sha256",
        ),
        ("listen = ", "TOML parse error"),
    ];
    for (text, key) in cases {
        let (code, said) = check("dcwatt-collector", text);
        assert_eq!(code, 2, "{text}: {said}");
        assert!(said.contains(key), "{text}: should name {key}: {said}");
    }
}

#[test]
fn agent_check_config() {
    assert_eq!(
        check(
            "dcwatt-agent",
            "listen = \"127.0.0.1:9101\"\n[[sources]]\ntype = \"nvml\"\n"
        )
        .0,
        0
    );
    let cases = [
        ("interval = \"1ms\"\n", "interval"),
        ("[[sources]]\ntype = \"modbus\"\n", "modbus"),
        (
            "[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"not a url\"\n",
            "sources[0].url",
        ),
        (
            "[[collectors]]\nurl = \"http://127.0.0.1:1\"\ntoken_file = \"/nonexistent/token\"\n",
            "collectors[0].token_file",
        ),
        ("bogus = 1\n", "bogus"),
    ];
    for (text, key) in cases {
        let (code, said) = check("dcwatt-agent", text);
        assert_eq!(code, 2, "{text}: {said}");
        assert!(said.contains(key), "{text}: should name {key}: {said}");
    }
}
