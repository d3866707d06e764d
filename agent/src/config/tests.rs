//! The configuration's validation: every key's errors, and what builds.

use super::*;

fn build(text: &str) -> Result<RuntimeConfig, String> {
    AgentConfig::from_toml(text)
        .and_then(AgentConfig::build)
        .map_err(|e| e.to_string())
}

fn token_file(content: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), content).unwrap();
    f
}

#[test]
fn minimal_config_gets_defaults() {
    let c = build("[[sources]]\ntype = \"nvml\"\n").unwrap();
    assert_eq!(c.listen, "127.0.0.1:9101".parse().unwrap());
    assert_eq!(c.interval, Duration::from_secs(1));
    assert!(!c.node.is_empty());
    assert!(c.collectors.is_empty());
    assert_eq!(
        c.sources,
        vec![SourceSpec::Nvml(NvmlSpec {
            library: NvmlLibrary::System,
            ship_modules: false,
        })]
    );
}

#[test]
fn empty_config_is_valid() {
    let c = build("").unwrap();
    assert!(c.sources.is_empty());
}

#[test]
fn full_config_builds() {
    let tok = token_file("  s3cret\n");
    let text = format!(
        r#"
listen = "0.0.0.0:0"
interval = "200ms"
node = "r12-n03"
[[collectors]]
url = "http://collector-a:9400"
token_file = "{}"
[[sources]]
type = "nvml"
library = "/opt/libnvidia-ml.so.1"
[[sources]]
type = "redfish"
meter = "pdu-r12-a"
url = "https://pdu-r12-a/redfish/v1/PowerEquipment/RackPDUs/1/Metrics"
timeout = "500ms"
"#,
        tok.path().display()
    );
    let c = build(&text).unwrap();
    assert_eq!(c.interval, Duration::from_millis(200));
    assert_eq!(c.node, "r12-n03");
    assert_eq!(c.collectors[0].token, "s3cret");
    assert_eq!(c.collectors[0].timeout, Duration::from_secs(5));
    assert_eq!(
        c.sources[0],
        SourceSpec::Nvml(NvmlSpec {
            library: NvmlLibrary::Path("/opt/libnvidia-ml.so.1".into()),
            ship_modules: false,
        })
    );
    match &c.sources[1] {
        SourceSpec::Redfish(r) => {
            assert_eq!(r.meter, "pdu-r12-a");
            assert_eq!(r.timeout, Duration::from_millis(500));
        }
        other => panic!("{other:?}"),
    }
    assert!(!format!("{:?}", c.collectors[0]).contains("s3cret"));
}

#[test]
fn redfish_timeout_defaults_to_2s() {
    let c =
        build("[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h/x\"\n").unwrap();
    match &c.sources[0] {
        SourceSpec::Redfish(r) => assert_eq!(r.timeout, Duration::from_secs(2)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn relative_url_names_the_key() {
    let err = build(
        "[[sources]]\ntype = \"nvml\"\n[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"/redfish/v1\"\n",
    )
    .unwrap_err();
    assert_eq!(err, "sources[1].url: relative URL without a base");
}

#[test]
fn non_http_url_is_refused() {
    let err =
        build("[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"ftp://h/x\"\n").unwrap_err();
    assert!(
        err.starts_with("sources[0].url: unsupported scheme"),
        "{err}"
    );
}

#[test]
fn missing_token_file_names_the_key() {
    let err = build("[[collectors]]\nurl = \"http://c:9400\"\ntoken_file = \"/x\"\n").unwrap_err();
    assert_eq!(
        err,
        "collectors[0].token_file: cannot read /x: No such file or directory (os error 2)"
    );
}

#[test]
fn ship_interval_defaults_to_zero_and_is_bounded() {
    let tok = token_file("t\n");
    let with = |extra: &str| {
        build(&format!(
            "[[collectors]]\nurl = \"http://c:9400\"\ntoken_file = \"{}\"\n{extra}",
            tok.path().display()
        ))
    };
    assert_eq!(
        with("").unwrap().collectors[0].ship_interval,
        Duration::ZERO
    );
    assert_eq!(
        with("ship_interval = \"5s\"\n").unwrap().collectors[0].ship_interval,
        Duration::from_secs(5)
    );
    assert_eq!(
        with("ship_interval = \"16s\"\n").unwrap_err(),
        "collectors[0].ship_interval: 16s is above the longest accepted, 15s"
    );
    let err = with("ship_interval = \"often\"\n").unwrap_err();
    assert!(err.contains("ship_interval"), "{err}");
}

#[test]
fn encoding_defaults_to_json_and_names_the_key_when_wrong() {
    use dcwatt_wire::binary::Encoding;
    let tok = token_file("t\n");
    let with = |extra: &str| {
        build(&format!(
            "[[collectors]]\nurl = \"http://c:9400\"\ntoken_file = \"{}\"\n{extra}",
            tok.path().display()
        ))
    };
    assert_eq!(with("").unwrap().collectors[0].encoding, Encoding::Json);
    assert_eq!(
        with("encoding = \"json\"\n").unwrap().collectors[0].encoding,
        Encoding::Json
    );
    assert_eq!(
        with("encoding = \"binary\"\n").unwrap().collectors[0].encoding,
        Encoding::Binary
    );
    assert_eq!(
        with("encoding = \"cbor\"\n").unwrap_err(),
        "collectors[0].encoding: \"cbor\" is not one of \"json\", \"binary\""
    );
}

#[test]
fn empty_token_is_refused() {
    let tok = token_file(" \n");
    let err = build(&format!(
        "[[collectors]]\nurl = \"http://c:9400\"\ntoken_file = \"{}\"\n",
        tok.path().display()
    ))
    .unwrap_err();
    assert!(
        err.starts_with("collectors[0].token_file: ") && err.ends_with("holds an empty token"),
        "{err}"
    );
}

#[test]
fn duplicate_meter_ids_are_refused() {
    let err = build(
        "[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h/a\"\n\
         [[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h/b\"\n",
    )
    .unwrap_err();
    assert_eq!(err, "sources[1].meter: duplicate meter id \"m\"");
}

#[test]
fn second_nvml_source_is_refused() {
    let err = build("[[sources]]\ntype = \"nvml\"\n[[sources]]\ntype = \"nvml\"\n").unwrap_err();
    assert_eq!(err, "sources[1].type: only one nvml source is allowed");
}

#[test]
fn short_interval_is_refused() {
    let err = build("interval = \"50ms\"\n").unwrap_err();
    assert_eq!(err, "interval: 50ms is shorter than the minimum of 100ms");
    assert!(build("interval = \"100ms\"\n").is_ok());
}

#[test]
fn bad_listen_is_refused() {
    let err = build("listen = \"localhost\"\n").unwrap_err();
    assert!(err.starts_with("listen: "), "{err}");
}

#[test]
fn empty_node_is_refused() {
    assert_eq!(
        build("node = \" \"\n").unwrap_err(),
        "node: \"\" must be 1 to 128 characters (it is the agent's id)"
    );
}

#[test]
fn type_error_names_the_key() {
    let err = build("interval = 5\n").unwrap_err();
    assert!(err.contains("interval"), "{err}");
    let err = build(
        "[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h\"\ntimeout = \"soon\"\n",
    )
    .unwrap_err();
    assert!(err.contains("timeout"), "{err}");
}

#[test]
fn unknown_key_is_refused() {
    let err = build("listne = \"127.0.0.1:1\"\n").unwrap_err();
    assert!(err.contains("listne"), "{err}");
    let err = build("[[sources]]\ntype = \"nvml\"\nlibary = \"/x\"\n").unwrap_err();
    assert!(err.contains("libary"), "{err}");
}

#[test]
fn unknown_source_type_is_refused() {
    let err = build("[[sources]]\ntype = \"snmp\"\n").unwrap_err();
    assert!(err.contains("snmp"), "{err}");
}

#[test]
fn missing_required_key_is_named() {
    let err = build("[[sources]]\ntype = \"redfish\"\nurl = \"http://h\"\n").unwrap_err();
    assert!(
        err.contains("missing key `meter` (required for type = \"redfish\")"),
        "{err}"
    );
    let err = build("[[sources]]\ntype = \"nvml\"\nurl = \"http://h\"\n").unwrap_err();
    assert!(
        err.contains("key `url` is not valid for type = \"nvml\""),
        "{err}"
    );
}

#[test]
fn ship_modules_is_an_nvml_key_off_by_default() {
    let c = build("[[sources]]\ntype = \"nvml\"\nship_modules = true\n").unwrap();
    assert_eq!(
        c.sources,
        vec![SourceSpec::Nvml(NvmlSpec {
            library: NvmlLibrary::System,
            ship_modules: true,
        })]
    );
    let c = build("[[sources]]\ntype = \"nvml\"\n").unwrap();
    assert!(matches!(&c.sources[0], SourceSpec::Nvml(n) if !n.ship_modules));
    let err = build(
        "[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h/\"\nship_modules = true\n",
    )
    .unwrap_err();
    assert!(
        err.contains("key `ship_modules` is not valid for type = \"redfish\""),
        "{err}"
    );
    let err = build("[[sources]]\ntype = \"nvml\"\nship_modules = \"yes\"\n").unwrap_err();
    assert!(err.contains("ship_modules"), "{err}");
}

#[test]
fn source_type_errors_point_at_the_line() {
    let err = build(
        "[[sources]]\ntype = \"nvml\"\n[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h\"\ntimeout = 3\n",
    )
    .unwrap_err();
    assert!(err.contains("line 7"), "{err}");
    assert!(err.contains("timeout = 3"), "{err}");
}

#[test]
fn spool_section_builds_and_names_bad_keys() {
    let tok = token_file("t");
    let base = format!(
        "[[collectors]]\nurl = \"http://c:9400\"\ntoken_file = \"{}\"\n",
        tok.path().display()
    );
    let c = build(&base).unwrap();
    assert_eq!(c.spool.storage, Storage::Memory);
    let c = build(&format!("{base}[spool]\ndir = \"/var/lib/dcwatt/spool\"\n")).unwrap();
    assert_eq!(
        c.spool,
        SpoolSpec {
            storage: Storage::Disk {
                dir: "/var/lib/dcwatt/spool".into(),
                fsync: Fsync::Always
            },
            max_bytes: 1 << 30
        }
    );
    let c = build(&format!(
        "{base}[spool]\ndir = \"/s\"\nmax_bytes = 65536\nfsync = \"never\"\n"
    ))
    .unwrap();
    assert_eq!(c.spool.max_bytes, 65536);
    assert!(matches!(
        c.spool.storage,
        Storage::Disk {
            fsync: Fsync::Never,
            ..
        }
    ));
    assert_eq!(
        build(&format!("{base}[spool]\ndir = \"/s\"\nmax_bytes = 10\n")).unwrap_err(),
        "spool.max_bytes: 10 is below the minimum of 16384"
    );
    assert_eq!(
        build(&format!("{base}[spool]\ndir = \"\"\n")).unwrap_err(),
        "spool.dir: empty path"
    );
    let err = build(&format!(
        "{base}[spool]\ndir = \"/s\"\nfsync = \"sometimes\"\n"
    ))
    .unwrap_err();
    assert!(err.contains("fsync") && err.contains("sometimes"), "{err}");
    let err = build(&format!("{base}[spool]\ndri = \"/s\"\n")).unwrap_err();
    assert!(err.contains("dri"), "{err}");
    assert_eq!(
        build("[spool]\ndir = \"/s\"\n").unwrap_err(),
        "spool: no [[collectors]] are configured, so there is nothing to spool"
    );
}

// ---- meters ----

#[test]
fn redfish_discovery_with_session_auth_builds() {
    let pw = token_file("hunter2\n");
    let c = build(&format!(
        "[[sources]]\ntype = \"redfish\"\nmeter = \"pdu-a\"\nurl = \"https://pdu-a/redfish/v1\"\n\
         discover = true\ninterval = \"30s\"\ntimeout = \"40s\"\nauth = \"session\"\n\
         username = \"dcwatt\"\npassword_file = {:?}\n",
        pw.path()
    ))
    .unwrap();
    let SourceSpec::Redfish(r) = &c.sources[0] else {
        panic!("{:?}", c.sources)
    };
    assert!(r.discover);
    assert_eq!(r.interval, Some(Duration::from_secs(30)));
    assert_eq!(
        r.auth,
        RedfishAuth::Session {
            username: "dcwatt".into(),
            password: "hunter2".into()
        }
    );
    assert!(!format!("{r:?}").contains("hunter2"), "password redacted");
}

#[test]
fn redfish_meter_keys_are_checked() {
    let base = "[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h/x\"\n";
    for (extra, expected) in [
        ("username = \"u\"\n", "sources[0].password_file: missing"),
        ("auth = \"session\"\n", "sources[0].username: missing"),
        (
            "ca_file = \"/nonexistent/ca.pem\"\n",
            "sources[0].ca_file: cannot read",
        ),
        (
            "interval = \"1ms\"\n",
            "sources[0].interval: 1ms is shorter",
        ),
        (
            "headers = { a = \"b\" }\n",
            "key `headers` is not valid for type = \"redfish\"",
        ),
        (
            "power = { pointer = \"/p\", unit = \"W\" }\n",
            "key `power` is not valid",
        ),
        ("tls_insecure_skip_verify = \"yes\"\n", "invalid type"),
    ] {
        let err = build(&format!("{base}{extra}")).unwrap_err();
        assert!(err.contains(expected), "{extra}: {err}");
    }
    let err = build("[[sources]]\ntype = \"nvml\"\ninterval = \"1s\"\n").unwrap_err();
    assert!(
        err.contains("key `interval` is not valid for type = \"nvml\""),
        "{err}"
    );
    let c = build(&format!("{base}tls_insecure_skip_verify = true\n")).unwrap();
    let SourceSpec::Redfish(r) = &c.sources[0] else {
        panic!()
    };
    assert!(r.tls.insecure_skip_verify);
}

#[test]
fn prometheus_text_keys_are_checked() {
    let base =
        "[[sources]]\ntype = \"prometheus_text\"\nmeter = \"ups\"\nurl = \"http://h/metrics\"\n";
    let c = build(&format!(
        "{base}energy = {{ metric = \"upsOutputEnergy\", labels = {{ line = \"1\" }}, unit = \"kWh\" }}\n"
    ))
    .unwrap();
    let SourceSpec::PrometheusText(p) = &c.sources[0] else {
        panic!()
    };
    assert_eq!(p.quantities[0].quantity, Quantity::EnergyJoules);
    assert_eq!(p.quantities[0].labels["line"], "1");
    let c = build(&format!(
        "{base}water_volume = {{ metric = \"makeup_water_gallons_total\", unit = \"gal\" }}\n"
    ))
    .unwrap();
    let SourceSpec::PrometheusText(p) = &c.sources[0] else {
        panic!()
    };
    assert_eq!(p.quantities[0].quantity, Quantity::WaterVolumeCubicMeters);
    assert_eq!(p.quantities[0].unit.to_si(1.0), 3.785_411_784e-3);
    for (extra, expected) in [
        (
            "power = { metric = \"9x\", unit = \"W\" }\n",
            "sources[0].power.metric: \"9x\" is not a metric name",
        ),
        (
            "power = { pointer = \"/p\", unit = \"W\" }\n",
            "sources[0].power.pointer: not valid",
        ),
        (
            "method = \"POST\"\npower = { metric = \"p\", unit = \"W\" }\n",
            "key `method` is not valid",
        ),
        (
            "coolant_flow = { metric = \"f\", unit = \"W\" }\n",
            "not a unit of coolant_flow",
        ),
        (
            "water_volume = { metric = \"w\", unit = \"L/min\" }\n",
            "sources[0].water_volume.unit: \"L/min\" is not a unit of water_volume (expected a unit convertible to m3)",
        ),
    ] {
        let err = build(&format!("{base}{extra}")).unwrap_err();
        assert!(err.contains(expected), "{extra}: {err}");
    }
}

#[test]
fn meter_ids_are_unique_across_types() {
    let err = build(
        "[[sources]]\ntype = \"redfish\"\nmeter = \"m\"\nurl = \"http://h/a\"\n\
         [[sources]]\ntype = \"http_json\"\nmeter = \"m\"\nurl = \"http://h/b\"\n\
         power = { pointer = \"/p\", unit = \"W\" }\n",
    )
    .unwrap_err();
    assert!(
        err.contains("sources[1].meter: duplicate meter id \"m\""),
        "{err}"
    );
}

#[test]
fn node_must_be_an_id_the_collector_accepts() {
    // The literal reference (escaped, so not expanded) is what an agent without
    // env expansion used to ship, and every collector refused.
    let e = build("node = \"$${NODE_NAME}\"\n").unwrap_err();
    assert!(e.starts_with("node: \"${NODE_NAME}\" contains '$'"), "{e}");
    let e = build("node = \"r1 n2\"\n").unwrap_err();
    assert!(e.starts_with("node: ") && e.contains("' '"), "{e}");
    let e = build(&format!("node = \"{}\"\n", "a".repeat(129))).unwrap_err();
    assert!(e.contains("1 to 128"), "{e}");
    assert_eq!(
        build(&format!("node = \"{}\"\n", "a".repeat(128)))
            .unwrap()
            .node
            .len(),
        128
    );
    assert_eq!(
        build("node = \"r1-n2.hall_1:x\"\n").unwrap().node,
        "r1-n2.hall_1:x"
    );
}

#[test]
fn values_may_name_environment_variables() {
    std::env::set_var("DCWATT_AGENT_CONFIG_TEST_NODE", "gpu-node-17");
    let tok = token_file("t0ken\n");
    let dir = tok.path().parent().unwrap().display().to_string();
    let name = tok.path().file_name().unwrap().to_str().unwrap().to_owned();
    std::env::set_var("DCWATT_AGENT_CONFIG_TEST_TOKEN", &name);
    let c = build(&format!(
        r#"
node = "${{DCWATT_AGENT_CONFIG_TEST_NODE}}"
[[collectors]]
url = "https://collector:9400/x$y"
token_file = "{dir}/${{DCWATT_AGENT_CONFIG_TEST_TOKEN}}"
"#
    ))
    .unwrap();
    assert_eq!(c.node, "gpu-node-17");
    assert_eq!(c.collectors[0].url.as_str(), "https://collector:9400/x$y");

    let e = build("node = \"${DCWATT_AGENT_CONFIG_TEST_SURELY_UNSET}\"\n").unwrap_err();
    assert_eq!(
        e,
        "node: environment variable DCWATT_AGENT_CONFIG_TEST_SURELY_UNSET is not set"
    );
    let e = build(
        "[[collectors]]\nurl = \"http://c:9400\"\ntoken_file = \"/t/${DCWATT_AGENT_CONFIG_TEST_SURELY_UNSET}\"\n",
    )
    .unwrap_err();
    assert!(
        e.starts_with("collectors[0].token_file: environment variable"),
        "{e}"
    );
    let e = build("node = \"${oops\"\n").unwrap_err();
    assert!(e.starts_with("node: ") && e.contains("$${"), "{e}");
}
