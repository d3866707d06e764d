//! The deployment as shipped, checked by the real tools: every Kubernetes
//! manifest against the Kubernetes schemas (`kubernetes-validate`, offline),
//! the Dockerfiles by `hadolint`, the per-node token provisioning
//! (`scripts/provision-agents`), and the DaemonSet's own agent.toml run as the
//! pod would run it: `node = "${NODE_NAME}"`, its node's token from the
//! provisioned Secret, TLS with the site CA, into a collector configured with
//! the provisioned `[[agents]]` entries.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dcwatt_collector::config::{token_hash, Config};
use dcwatt_sim::launch::Proc;
use dcwatt_tests::{make_certs, wait_for};

fn repo() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

/// A tool that `scripts/test` installs into the repository's `.venv-test`.
fn venv_tool(name: &str) -> PathBuf {
    let p = repo().join(".venv-test/bin").join(name);
    assert!(
        p.exists(),
        "{} is missing: scripts/test installs it",
        p.display()
    );
    p
}

/// Runs a program; (success, stdout + stderr).
fn run(program: &Path, args: &[&OsString], envs: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(repo());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// Runs scripts/provision-agents; (success, output).
fn provision(args: &[&str]) -> (bool, String) {
    let args: Vec<OsString> = args.iter().map(os).collect();
    let refs: Vec<&OsString> = args.iter().collect();
    run(&repo().join("scripts/provision-agents"), &refs, &[])
}

/// The `data:` entries of a Secret written by provision-agents, decoded.
fn secret_data(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let data = text.split("\ndata:\n").nth(1).expect("a data: section");
    data.lines()
        .map(|l| {
            let (k, v) = l.trim().split_once(": ").expect("key: value");
            (k.to_owned(), base64_decode(v))
        })
        .collect()
}

fn base64_decode(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn manifests() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    out.sort();
    out
}

/// Every resource of every manifest (and the Secrets provision-agents writes)
/// validates strictly (no unknown field) against the Kubernetes 1.37 schemas.
/// The Prometheus Operator's ServiceMonitor and PodMonitor are custom resources
/// whose schemas kubernetes-validate does not ship: they are the only ones
/// skipped, and the test fails if anything else is.
#[test]
fn kubernetes_manifests_validate_against_the_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes.txt");
    std::fs::write(&nodes, "gpu-a1\ngpu-a2\n").unwrap();
    let out = dir.path().join("prov");
    let (ok, said) = provision(&[
        "--scrape-token",
        nodes.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    let mut files: Vec<OsString> = vec![os("--strict")];
    files.extend(manifests().into_iter().map(OsString::from));
    files.push(out.join("agent-tokens.yaml").into());
    files.push(out.join("scrape-token.yaml").into());
    let refs: Vec<&OsString> = files.iter().collect();
    let (ok, said) = run(&venv_tool("kubernetes-validate"), &refs, &[]);
    assert!(ok, "kubernetes-validate:\n{said}");
    let mut passed: Vec<&str> = said
        .lines()
        .filter_map(|l| l.split(" passed for resource ").nth(1))
        .filter_map(|l| l.split(" against ").next())
        .collect();
    passed.sort_unstable();
    assert_eq!(
        passed,
        [
            "configmap/dcwatt-agent",
            "daemonset/dcwatt-agent",
            "namespace/dcwatt",
            "secret/dcwatt-agent-tokens",
            "secret/dcwatt-scrape",
            "service/dcwatt-collector",
            "statefulset/dcwatt-collector",
        ],
        "{said}"
    );
    let skipped: Vec<&str> = said
        .lines()
        .filter(|l| !l.contains(" passed for resource "))
        .collect();
    assert_eq!(skipped.len(), 2, "{said}");
    for l in skipped {
        assert!(
            l.contains("Couldn't find schema for kind ServiceMonitor")
                || l.contains("Couldn't find schema for kind PodMonitor"),
            "{l}"
        );
    }
    // The validator does fail: a DaemonSet with a misspelt field.
    let bad = dir.path().join("bad.yaml");
    let shipped = std::fs::read_to_string(repo().join("deploy/kubernetes/agent-daemonset.yaml"))
        .unwrap()
        .replace("runtimeClassName:", "runtimeClass:");
    std::fs::write(&bad, shipped).unwrap();
    let (ok, said) = run(
        &venv_tool("kubernetes-validate"),
        &[&os("--strict"), &bad.into_os_string()],
        &[],
    );
    assert!(!ok && said.contains("runtimeClass"), "{said}");
}

#[test]
fn dockerfiles_pass_hadolint() {
    let hadolint = venv_tool("hadolint");
    for name in ["Dockerfile.agent", "Dockerfile.collector"] {
        let path = os(repo().join("deploy/docker").join(name));
        let (ok, said) = run(&hadolint, &[&path], &[]);
        assert!(ok && said.trim().is_empty(), "hadolint {name}:\n{said}");
    }
    // hadolint does fail: the apt-get install the images avoid.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("Dockerfile");
    std::fs::write(
        &bad,
        "FROM debian:bookworm-slim\nRUN apt-get update && apt-get install -y curl\n",
    )
    .unwrap();
    let (ok, said) = run(&hadolint, &[&bad.into_os_string()], &[]);
    assert!(!ok && said.contains("DL3008"), "{said}");
    // The build context leaves out target/ (gigabytes) and the virtualenv.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target/"), "{ignore}");
}

/// One token per node, different; the collector's entries carry each token's
/// SHA-256 and build; bad or duplicate node names and existing files are refused.
#[test]
fn provision_agents_writes_a_token_per_node_and_the_collector_entries() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes.txt");
    std::fs::write(
        &nodes,
        "# GPU nodes of hall 1\ngpu-a1\n\n  gpu-a2.hall-1  \ngpu-a3 # the last one\n",
    )
    .unwrap();
    let out = dir.path().join("prov");
    let (ok, said) = provision(&[
        "--zone",
        "hall-1",
        "--scrape-token",
        nodes.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    let tokens = secret_data(&out.join("agent-tokens.yaml"));
    let names: Vec<&str> = tokens.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["gpu-a1", "gpu-a2.hall-1", "gpu-a3"]);
    let mut distinct: Vec<&str> = tokens.iter().map(|(_, v)| v.as_str()).collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3);
    assert!(tokens.iter().all(|(_, t)| t.len() == 64));
    let scrape = secret_data(&out.join("scrape-token.yaml"));
    assert_eq!(scrape.len(), 1);
    assert_eq!(scrape[0].0, "token");

    let fragment = std::fs::read_to_string(out.join("collector-agents.toml")).unwrap();
    let metrics = std::fs::read_to_string(out.join("collector-metrics.toml")).unwrap();
    for (_, t) in tokens.iter().chain(&scrape) {
        assert!(!fragment.contains(t.as_str()) && !metrics.contains(t.as_str()));
    }
    let site = Config::from_toml(&format!(
        "[operator]\ntoken_sha256 = \"{}\"\n{metrics}\n{fragment}",
        hex::encode(token_hash("operator"))
    ))
    .and_then(Config::build)
    .unwrap_or_else(|e| panic!("{e}\n{fragment}"));
    for (node, token) in &tokens {
        assert_eq!(&site.agent_tokens[&token_hash(token)], node);
        assert_eq!(site.agent_zones[node], "hall-1");
        assert!(site.agent_meters.get(node).is_none_or(|m| m.is_empty()));
    }
    assert_eq!(site.metrics_token, Some(token_hash(&scrape[0].1)));

    // Existing files are never overwritten (the tokens may be in use).
    let before = std::fs::read_to_string(out.join("agent-tokens.yaml")).unwrap();
    let (ok, said) = provision(&[nodes.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(!ok && said.contains("not overwritten"), "{said}");
    assert_eq!(
        std::fs::read_to_string(out.join("agent-tokens.yaml")).unwrap(),
        before
    );
    // Names the collector or Kubernetes would refuse, and duplicates.
    for (content, needle) in [
        ("gpu-a1\nGPU_A2\n", "nodes.txt:2: \"GPU_A2\""),
        ("gpu-a1\ngpu-a1\n", "listed twice (first on line 1)"),
        ("# nothing\n", "no node names"),
        (&format!("{}\n", "a".repeat(129)), "at most 128"),
        ("r1:n2\n", "\"r1:n2\""),
    ] {
        std::fs::write(&nodes, content).unwrap();
        let fresh = dir.path().join("fresh");
        let (ok, said) = provision(&[nodes.to_str().unwrap(), fresh.to_str().unwrap()]);
        assert!(!ok && said.contains(needle), "{content:?}: {said}");
        assert!(!fresh.join("agent-tokens.yaml").exists());
    }
    let (ok, said) = provision(&["--zone", "hall 1", "x", "y"]);
    assert!(!ok && said.contains("--zone"), "{said}");
}

/// The agent.toml of the DaemonSet's ConfigMap, with the pod's paths moved
/// under `root` and the collector's Service name replaced by `collector_url`.
fn daemonset_agent_toml(root: &Path, collector_url: &str) -> String {
    let yaml =
        std::fs::read_to_string(repo().join("deploy/kubernetes/agent-daemonset.yaml")).unwrap();
    let block: Vec<&str> = yaml
        .lines()
        .skip_while(|l| l.trim() != "agent.toml: |")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(|l| &l[4..])
        .collect();
    assert!(block.len() > 5, "no agent.toml in the ConfigMap");
    let toml = block.join("\n") + "\n";
    assert!(toml.contains("node = \"${NODE_NAME}\""), "{toml}");
    assert!(
        toml.contains("token_file = \"/etc/dcwatt/tokens/${NODE_NAME}\""),
        "{toml}"
    );
    let root = root.display().to_string();
    toml.replace("0.0.0.0:9101", "127.0.0.1:0")
        .replace("https://dcwatt-collector.dcwatt.svc:9400", collector_url)
        .replace("\"/etc/dcwatt/", &format!("\"{root}/etc/dcwatt/"))
        .replace("\"/var/lib/dcwatt/", &format!("\"{root}/var/lib/dcwatt/"))
}

/// The DaemonSet's agent.toml as the pod runs it: NODE_NAME from the downward
/// API, its own token copied from the provisioned Secret (what the init
/// container does), the site CA; it reaches a TLS collector configured with the
/// provisioned entries under its node name. Without NODE_NAME it refuses to
/// start, naming the key and the variable; with the wrong node's token the
/// collector never accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemonset_config_with_provisioned_tokens_reaches_a_tls_collector() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certs(d);
    let nodes = d.join("nodes.txt");
    std::fs::write(&nodes, "gpu-a1\ngpu-a2\n").unwrap();
    let prov = d.join("prov");
    let (ok, said) = provision(&[
        "--scrape-token",
        nodes.to_str().unwrap(),
        prov.to_str().unwrap(),
    ]);
    assert!(ok, "{said}");
    let tokens = secret_data(&prov.join("agent-tokens.yaml"));
    let scrape = secret_data(&prov.join("scrape-token.yaml"))[0].1.clone();
    let operator = "operator-token";
    let collector_toml = d.join("collector.toml");
    std::fs::write(
        &collector_toml,
        format!(
            "listen = \"127.0.0.1:0\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             [operator]\ntoken_sha256 = \"{}\"\n{}\n{}",
            d.join("server.pem").display(),
            d.join("server.key").display(),
            hex::encode(token_hash(operator)),
            std::fs::read_to_string(prov.join("collector-metrics.toml")).unwrap(),
            std::fs::read_to_string(prov.join("collector-agents.toml")).unwrap(),
        ),
    )
    .unwrap();
    let collector = Proc::spawn(
        "collector",
        "dcwatt-collector",
        &[os("--config"), collector_toml.into_os_string()],
        &[],
        &d.join("collector.log"),
    )
    .unwrap();
    // The name in the collector's certificate.
    let url = format!("https://localhost:{}", collector.addr.port());

    let token_of = |node: &str| {
        tokens
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, t)| t.clone())
            .unwrap()
    };
    // Each pod's file system: the CA from the ConfigMap, its node's token (the
    // init container's copy), its node's spool hostPath. gpu-a2's pod is given
    // gpu-a1's token: the collector binds a token to its agent.
    let pod = |node: &str, token: &str| {
        let root = d.join(format!("pod-{node}"));
        std::fs::create_dir_all(root.join("etc/dcwatt/tokens")).unwrap();
        std::fs::create_dir_all(root.join("etc/dcwatt/ca")).unwrap();
        std::fs::create_dir_all(root.join("var/lib/dcwatt")).unwrap();
        std::fs::copy(d.join("ca.pem"), root.join("etc/dcwatt/ca/ca.crt")).unwrap();
        std::fs::write(root.join("etc/dcwatt/tokens").join(node), token).unwrap();
        let conf = root.join("agent.toml");
        std::fs::write(&conf, daemonset_agent_toml(&root, &url)).unwrap();
        conf
    };
    let a1 = pod("gpu-a1", &token_of("gpu-a1"));
    let a2 = pod("gpu-a2", &token_of("gpu-a1"));

    let agent = dcwatt_sim::launch::bin_dir().join("dcwatt-agent");
    let (ok, said) = run(&agent, &[&os("--check-config"), &os(&a1)], &[]);
    assert!(
        !ok && said.contains("node: environment variable NODE_NAME is not set"),
        "{said}"
    );
    let (ok, said) = run(
        &agent,
        &[&os("--check-config"), &os(&a1)],
        &[("NODE_NAME", "gpu-a1")],
    );
    assert!(ok, "{said}");

    let mut agents = Vec::new();
    for (node, conf) in [("gpu-a1", &a1), ("gpu-a2", &a2)] {
        agents.push(
            Proc::spawn(
                node,
                "dcwatt-agent",
                &[os("--config"), os(conf)],
                &[("NODE_NAME", os(node)), ("RUST_LOG", os("warn"))],
                &d.join(format!("agent-{node}.log")),
            )
            .unwrap(),
        );
    }

    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(d.join("ca.pem")).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let ready = client.get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let seen = wait_for(
        "gpu-a1's batches over TLS",
        Duration::from_secs(60),
        || async {
            let s: serde_json::Value = client
                .get(format!("{url}/v1/summary"))
                .bearer_auth(operator)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let list = s["agents"].as_array()?.clone();
            list.iter()
                .any(|a| a["id"] == "gpu-a1" && a["last_seq"].as_u64().unwrap_or(0) > 0)
                .then_some(list)
        },
    )
    .await;
    // gpu-a2 presented gpu-a1's token under its own id: refused (403).
    let a2_log = wait_for("gpu-a2 refused", Duration::from_secs(60), || async {
        let log = std::fs::read_to_string(d.join("agent-gpu-a2.log")).unwrap_or_default();
        (log.contains("403") && log.contains("the token belongs to agent")).then_some(log)
    })
    .await;
    assert!(
        seen.iter().all(|a| a["id"] != "gpu-a2"),
        "{seen:?}\n{a2_log}"
    );
    // Prometheus' scrape token reads /metrics; none is refused.
    let m = client
        .get(format!("{url}/metrics"))
        .bearer_auth(&scrape)
        .send()
        .await
        .unwrap();
    assert_eq!(m.status(), 200);
    let m = client.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(m.status(), 401);
    drop(agents);
    drop(collector);
}

/// The campus configuration: the hall Prometheus config passes `promtool check
/// config` (with the rule file and token beside it, as deployed), vmalert
/// accepts the shipped recording rules (`-dryRun`), and the vmalert unit
/// passes `systemd-analyze verify`.
#[test]
fn campus_configs_pass_promtool_vmalert_and_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::copy(
        repo().join("deploy/campus/prometheus-hall.yml"),
        d.join("prometheus.yml"),
    )
    .unwrap();
    std::fs::copy(
        repo().join("deploy/prometheus/alerts.yml"),
        d.join("alerts.yml"),
    )
    .unwrap();
    std::fs::write(d.join("dcwatt-scrape.token"), "scrape-token\n").unwrap();
    let out = Command::new("promtool")
        .args(["check", "config", "prometheus.yml"])
        .current_dir(d)
        .output()
        .expect("promtool (scripts/test installs it)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(d.join("prometheus.yml")).unwrap();
    assert!(text.contains("external_labels:") && text.contains("remote_write:"));

    for rules in [
        "deploy/prometheus/recording.yml",
        "deploy/prometheus/alerts.yml",
    ] {
        let rule = os(format!("-rule={}", repo().join(rules).display()));
        let (ok, said) = run(Path::new("vmalert"), &[&os("-dryRun"), &rule], &[]);
        assert!(ok, "vmalert -dryRun {rules}:\n{said}");
    }
    // vmalert does refuse a broken rule.
    std::fs::write(
        d.join("bad.yml"),
        "groups:\n  - name: x\n    rules:\n      - record: a:b\n        expr: sum(\n",
    )
    .unwrap();
    let rule = os(format!("-rule={}", d.join("bad.yml").display()));
    let (ok, _) = run(Path::new("vmalert"), &[&os("-dryRun"), &rule], &[]);
    assert!(!ok, "vmalert accepted a broken rule");

    std::fs::copy(
        repo().join("deploy/campus/vmalert.service"),
        d.join("vmalert.service"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "vmalert.service"])
        .current_dir(d)
        .output()
        .expect("systemd-analyze (scripts/test installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}
