//! deploy/kubernetes: the base and the example overlay build with `kubectl kustomize`, every
//! resource validates against the Kubernetes 1.32 schemas (kubernetes-validate, strict), and
//! what the operations guide promises of them holds in what they build: three replicas with
//! the probes, a restrictive security context, the database URL and TLS from Secrets, a
//! PodDisruptionBudget, a ServiceMonitor that finds the metrics, the PrometheusRule generated
//! from deploy/prometheus, the dashboards and the plan as ConfigMaps, and a configuration the
//! aggregator itself accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

use duban_aggregator::config::ServeFile;
use duban_e2e::require_program;
use serde_json::Value;

/// The Kubernetes version the manifests are validated against (docs: deploy/kubernetes).
const KUBERNETES_VERSION: &str = "1.32.0";

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn tools(test: &str) -> bool {
    require_program("kubectl", "kubectl")
        && duban_testkit::program(
            test,
            "kubernetes-validate",
            duban_testkit::PYPI_KUBERNETES_VALIDATE,
        )
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("the program runs");
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// `kubectl kustomize DIR`, as YAML.
fn build(dir: &str) -> String {
    run(Command::new("kubectl")
        .arg("kustomize")
        .arg(deploy().join("kubernetes").join(dir)))
}

/// The resources of a YAML stream, through PyYAML (which kubernetes-validate reads them with).
fn resources(yaml: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("built.yaml");
    std::fs::write(&file, yaml).unwrap();
    let json = run(Command::new("python3").arg("-c").arg(
        "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
    ).arg(&file));
    serde_json::from_str(&json).unwrap()
}

fn find<'a>(all: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    let found: Vec<&Value> = all
        .iter()
        .filter(|r| r["kind"] == kind)
        .filter(|r| {
            r["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(name_prefix))
        })
        .collect();
    assert_eq!(found.len(), 1, "one {kind} named {name_prefix}*: {found:?}");
    found[0]
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .expect("matchLabels")
        .iter()
        .all(|(k, v)| labels[k] == *v)
}

#[test]
fn the_base_and_the_example_overlay_validate_against_the_kubernetes_schemas() {
    let test = "the_base_and_the_example_overlay_validate_against_the_kubernetes_schemas";
    if !tools(test) {
        return;
    }
    for dir in ["base", "overlays/example"] {
        let yaml = build(dir);
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("built.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let out = Command::new("kubernetes-validate")
            .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict"])
            .arg(&file)
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !report.contains("ERROR"),
            "{dir}:\n{report}"
        );
        // Every resource was checked, but the Prometheus Operator's two kinds, which have no
        // schema there (the next test checks what they point at).
        let all = resources(&yaml);
        let passed = report.matches(" passed for resource ").count();
        let unchecked: Vec<&str> = report
            .lines()
            .filter(|l| l.contains("Couldn't find schema"))
            .collect();
        assert_eq!(passed + unchecked.len(), all.len(), "{dir}:\n{report}");
        assert_eq!(unchecked.len(), 2, "{dir}:\n{report}");
        assert!(
            unchecked
                .iter()
                .all(|l| l.contains("kind PrometheusRule") || l.contains("kind ServiceMonitor")),
            "{dir}:\n{report}"
        );
    }
}

#[test]
fn the_example_overlay_holds_what_the_operations_guide_promises() {
    let test = "the_example_overlay_holds_what_the_operations_guide_promises";
    if !tools(test) {
        return;
    }
    let all = resources(&build("overlays/example"));
    for resource in &all {
        if resource["kind"] != "Namespace" {
            assert_eq!(resource["metadata"]["namespace"], "duban", "{resource}");
        }
    }

    let deployment = find(&all, "Deployment", "duban-aggregator");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 3);
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    assert!(labels_match(&spec["selector"]["matchLabels"], labels));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["automountServiceAccountToken"], false);
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.city.example/duban:0.1.0");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    let context = &container["securityContext"];
    assert_eq!(context["readOnlyRootFilesystem"], true);
    assert_eq!(context["allowPrivilegeEscalation"], false);
    assert_eq!(context["capabilities"]["drop"][0], "ALL");
    assert!(container["resources"]["limits"]["memory"].is_string());
    let env = &container["env"][0];
    assert_eq!(env["name"], "DUBAN_DATABASE_URL");
    assert_eq!(env["valueFrom"]["secretKeyRef"]["name"], "duban-database");

    // Each mounted volume, by mount path: its source.
    let volume = |mount: &str| -> Value {
        let m = container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == mount)
            .unwrap_or_else(|| panic!("a volume at {mount}"));
        assert!(
            m.get("subPath").is_none(),
            "{mount}: a subPath is never updated"
        );
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap()
            .clone()
    };
    let config_map = |name: &Value| find(&all, "ConfigMap", name.as_str().unwrap()).clone();
    let config = config_map(&volume("/etc/duban/config")["configMap"]["name"]);
    let plan = config_map(&volume("/etc/duban/plan")["configMap"]["name"]);
    assert_eq!(
        volume("/etc/duban/tls")["secret"]["secretName"],
        "duban-aggregator-tls"
    );

    // The configuration is one the aggregator accepts, and its files are where the volumes
    // put them.
    let text = config["data"]["aggregator.toml"].as_str().unwrap();
    let file = ServeFile::parse(text, "aggregator.toml").expect("the aggregator reads it");
    let plan_path = file.plan.clone().unwrap();
    let tls = file.tls.clone().unwrap();
    let settled = file
        .settle("aggregator.toml")
        .expect("the aggregator accepts it");
    assert!(settled.tls.is_some(), "mTLS on the agents' gRPC");
    assert_eq!(settled.grpc_listen.port(), 7700);
    assert_eq!(settled.http_listen.port(), 9464);
    assert!(!settled.alerts.sinks.alertmanagers.is_empty());
    let plan_key = plan_path.strip_prefix("/etc/duban/plan").unwrap();
    assert_eq!(
        plan["data"][plan_key.to_str().unwrap()].as_str().unwrap(),
        std::fs::read_to_string(deploy().join("plans/qingdao-2017.toml")).unwrap()
    );
    for path in [tls.cert, tls.key, tls.client_ca] {
        let path = path.unwrap();
        assert!(
            ["tls.crt", "tls.key", "ca.crt"]
                .map(|k| Path::new("/etc/duban/tls").join(k))
                .contains(&path),
            "{path:?} is not a key of the TLS Secret as README documents it"
        );
    }

    // Disruptions leave two replicas; the ServiceMonitor finds the metrics port.
    let pdb = find(&all, "PodDisruptionBudget", "duban-aggregator");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        labels
    ));
    let monitor = find(&all, "ServiceMonitor", "duban-aggregator");
    let http = find(&all, "Service", "duban-aggregator-http");
    assert!(labels_match(
        &monitor["spec"]["selector"]["matchLabels"],
        &http["metadata"]["labels"]
    ));
    let grpc = find(&all, "Service", "duban-aggregator-grpc");
    assert!(labels_match(&grpc["spec"]["selector"], labels));
    assert!(labels_match(&http["spec"]["selector"], labels));
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(http["spec"]["ports"][0]["name"], "http");
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
    assert_eq!(http["metadata"]["labels"][job_label], "duban-aggregator");

    // The dashboards, labelled for the Grafana sidecar, are the files of deploy/grafana.
    let dashboards = find(&all, "ConfigMap", "duban-grafana-dashboards");
    assert_eq!(dashboards["metadata"]["labels"]["grafana_dashboard"], "1");
    let mut files: Vec<String> = std::fs::read_dir(deploy().join("grafana/dashboards"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut keys: Vec<String> = dashboards["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    keys.sort();
    assert_eq!(keys, files);

    // The network policy lets the agents and Prometheus in, on the ports the pod names.
    let policy = find(&all, "NetworkPolicy", "duban-aggregator");
    assert!(labels_match(
        &policy["spec"]["podSelector"]["matchLabels"],
        labels
    ));
    let ports: Vec<&Value> = policy["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| &rule["ports"][0]["port"])
        .collect();
    assert_eq!(ports, [&Value::from("grpc"), &Value::from("http")]);
}

#[test]
fn the_prometheus_rule_is_generated_from_the_rules_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("prometheusrule.yaml");
    run(Command::new("bash")
        .arg(deploy().join("kubernetes/generate"))
        .arg(&out));
    let committed =
        std::fs::read_to_string(deploy().join("kubernetes/base/prometheusrule.yaml")).unwrap();
    assert!(
        std::fs::read_to_string(&out).unwrap() == committed,
        "deploy/kubernetes/base/prometheusrule.yaml differs from deploy/prometheus/duban-rules.yml: run deploy/kubernetes/generate"
    );
    // Its groups are the rules file's, line for line.
    let rules = std::fs::read_to_string(deploy().join("prometheus/duban-rules.yml")).unwrap();
    let groups = &rules[rules.find("groups:").unwrap()..];
    let indented: String = groups
        .lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("  {l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(committed.contains(&indented));
}
