//! `deploy/kubernetes/` checked against the binary itself: every flag and
//! environment variable the Deployment uses is one `corsd serve --help`
//! lists, the probes ask the ports and health services corsd serves, the
//! Service and the mounts line up, the ConfigMap's policy is valid, and the
//! front proxy's Envoy config is one Envoy accepts.

use std::path::Path;
use std::process::Command;

fn manifest(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/kubernetes")
            .join(name),
    )
    .unwrap()
}

/// The items of the YAML block list under the first `key:` line.
fn list_under(text: &str, key: &str) -> Vec<String> {
    let mut lines = text.lines().skip_while(|l| l.trim() != key);
    let Some(header) = lines.next() else { return Vec::new() };
    let indent = header.len() - header.trim_start().len();
    lines
        .take_while(|l| l.trim().starts_with("- ") && l.len() - l.trim_start().len() >= indent)
        .map(|l| l.trim().trim_start_matches("- ").trim_matches('"').to_owned())
        .collect()
}

/// The value after `key` (`key: value` or `key value` inside flow maps).
fn value_of<'t>(text: &'t str, line_has: &str, key: &str) -> &'t str {
    let line = text
        .lines()
        .find(|l| l.contains(line_has))
        .unwrap_or_else(|| panic!("no line with {line_has}"));
    let at = line.find(key).unwrap_or_else(|| panic!("no {key} in {line}")) + key.len();
    line[at..]
        .trim_start_matches([':', ' '])
        .split([',', '}', ' '])
        .next()
        .unwrap()
}

/// `args` run `corsd serve` with flags its `--help` lists.
fn assert_served(args: &[String], help: &str) {
    assert_eq!(args.first().map(String::as_str), Some("serve"), "{args:?}");
    let flags: Vec<&String> = args.iter().filter(|a| a.starts_with("--")).collect();
    assert!(flags.len() >= 5, "{flags:?}");
    for flag in &flags {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "`corsd serve --help` has no {flag}"
        );
    }
}

#[test]
fn the_manifests_use_only_what_corsd_serves() {
    let deployment = manifest("deployment.yaml");
    let help = String::from_utf8(
        Command::new(env!("CARGO_BIN_EXE_corsd"))
            .args(["serve", "--help"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();

    let args = list_under(&deployment, "args:");
    assert_served(&args, &help);
    // The etcd variant too.
    assert_served(&list_under(&manifest("deployment-etcd.yaml"), "args:"), &help);
    let arg = |flag: &str| {
        let at = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        args[at + 1].clone()
    };
    for line in deployment.lines().filter(|l| l.contains("name: CORSD_")) {
        let name = line.trim().trim_start_matches("- name:").trim();
        assert!(
            help.contains(&format!("[env: {name}=")),
            "`corsd serve --help` has no {name}"
        );
    }

    // The probes ask the ports corsd listens on, for a service it reports.
    let grpc_port = arg("--listen").rsplit(':').next().unwrap().to_owned();
    let metrics_port = arg("--metrics-listen").rsplit(':').next().unwrap().to_owned();
    assert_eq!(value_of(&deployment, "grpc: { port: 50051, service", "port"), grpc_port);
    let service = value_of(&deployment, "grpc: { port: 50051, service", "service");
    assert!(
        corsd::grpc::HEALTH_SERVICES.contains(&service),
        "corsd reports no health for {service}"
    );
    assert_eq!(value_of(&deployment, "httpGet: { path: /healthz", "port"), metrics_port);
    assert_eq!(
        value_of(&deployment, "name: grpc, containerPort", "containerPort"),
        grpc_port
    );
    assert_eq!(
        value_of(&deployment, "name: metrics, containerPort", "containerPort"),
        metrics_port
    );
    assert!(deployment.contains("replicas: 3"));
    assert!(deployment.contains("readOnlyRootFilesystem: true") && deployment.contains("runAsNonRoot: true"));

    // The policy file is in the mounted ConfigMap, mounted whole (no subPath).
    let mount = value_of(&deployment, "name: policy, mountPath", "mountPath");
    assert_eq!(Path::new(&arg("--policy")).parent().unwrap(), Path::new(mount));
    assert!(!deployment.contains("subPath"), "a subPath mount is never updated");
    let configmap = manifest("configmap.yaml");
    assert_eq!(
        value_of(&deployment, "configMap: { name:", "name:"),
        value_of(&configmap, "name: corsd-policy", "name")
    );
    let file_name = Path::new(&arg("--policy"))
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let policy: String = configmap
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(&format!("{file_name}: |")))
        .skip(1)
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or("")))
        .collect();
    corsd::core::Policy::compile(&file_name, policy.as_bytes()).expect("the ConfigMap's policy is valid");

    // The Service exposes the container's named ports; the drain fits the grace period.
    let service = manifest("service.yaml");
    assert_eq!(value_of(&service, "name: grpc, port", "port"), grpc_port);
    assert!(service.contains("targetPort: grpc") && service.contains("targetPort: metrics"));
    assert!(
        service.contains("clusterIP: None"),
        "headless, so Envoy sees every replica"
    );
    let grace: u64 = value_of(
        &deployment,
        "terminationGracePeriodSeconds",
        "terminationGracePeriodSeconds",
    )
    .parse()
    .unwrap();
    let secs = |d: String| d.trim_end_matches('s').parse::<u64>().unwrap();
    assert!(
        grace > secs(arg("--drain-delay")) + secs(arg("--shutdown-timeout")),
        "the grace period cuts the drain short"
    );
}

#[test]
fn the_front_proxy_config_is_one_envoy_accepts() {
    let Some(envoy) = crate::common::envoy::envoy_binary() else {
        return;
    };
    let front = manifest("envoy.yaml");
    let config: String = front
        .lines()
        .skip_while(|l| l.trim() != "envoy.yaml: |")
        .skip(1)
        .take_while(|l| l.trim() != "---")
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or("")))
        .collect();
    assert!(config.contains("address: corsd.default.svc.cluster.local, port_value: 50051"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(envoy)
        .args([
            "--mode",
            "validate",
            "-c",
            path.to_str().unwrap(),
            "--log-level",
            "error",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
