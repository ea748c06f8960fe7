//! The deployment files: `deploy_manifests` validates every Kubernetes manifest offline
//! against the Kubernetes schemas (`kubernetes-validate --strict`) and checks that they
//! agree with each other and with the agent; `deploy_systemd_unit` runs `systemd-analyze
//! verify` on the unit. Each first shows that its tool rejects a broken copy, so a pass
//! means something.

use std::{
    path::Path,
    process::{Command, Output},
};

use ctscope_tests::{ctscope, deploy};
use serde_json::Value;

/// The agent's default metrics port (README "Metrics"), which every file must use.
const METRICS_PORT: u16 = 18427;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `kubernetes-validate --strict FILES`.
fn validate(files: &[&Path]) -> Output {
    let tool = deploy::kubernetes_validate().expect("kubernetes-validate");
    Command::new(&tool)
        .arg("--strict")
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tool.display()))
}

pub fn manifests() {
    // A misspelt field and a wrong type must fail: the tool checks what it says it does.
    let dir = tempfile::tempdir().expect("temp dir");
    let daemonset = deploy::dir().join("kubernetes/daemonset.yaml");
    let good = std::fs::read_to_string(&daemonset).expect("daemonset.yaml");
    for (from, to) in [
        ("readOnlyRootFilesystem:", "readOnlyRootFS:"),
        ("hostPID: true", "hostPID: sometimes"),
    ] {
        assert!(good.contains(from), "daemonset.yaml has {from}");
        let broken = dir.path().join("broken.yaml");
        std::fs::write(&broken, good.replacen(from, to, 1)).expect("write");
        let out = validate(&[&broken]);
        assert!(
            !out.status.success(),
            "kubernetes-validate passed a DaemonSet with {to:?}:\n{}",
            text(&out)
        );
    }

    let files = deploy::manifests();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let out = validate(&paths);
    let said = text(&out);
    assert!(out.status.success(), "kubernetes-validate:\n{said}");
    let resources: Vec<Value> = files.iter().flat_map(|f| deploy::documents(f)).collect();
    for r in &resources {
        let kind = r["kind"].as_str().unwrap_or_default();
        let name = r["metadata"]["name"].as_str().unwrap_or_default();
        // ServiceMonitor is a CRD: no schema ships with Kubernetes'.
        let checked = format!("{}/{name}", kind.to_ascii_lowercase());
        let unchecked = format!("Couldn't find schema for kind {kind}");
        if kind == "ServiceMonitor" {
            assert!(said.contains(&unchecked), "{said}");
        } else {
            assert!(
                said.contains(&format!("passed for resource {checked}")),
                "{checked} was not validated:\n{said}"
            );
        }
    }
    agree(&resources);
}

/// The manifests fit together: selectors, ports, probes, the agent's flags.
fn agree(resources: &[Value]) {
    let find = |kind: &str| {
        resources
            .iter()
            .find(|r| r["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
    };
    let (ds, svc, monitor) = (find("DaemonSet"), find("Service"), find("ServiceMonitor"));
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["hostNetwork"], true, "hostNetwork");
    assert_eq!(spec["hostPID"], true, "hostPID");
    assert_eq!(
        spec["tolerations"],
        serde_json::json!([{"operator": "Exists"}]),
        "tolerates every taint"
    );
    let labels = &pod["metadata"]["labels"];
    let selects = |selector: &Value| {
        selector
            .as_object()
            .is_some_and(|m| !m.is_empty() && m.iter().all(|(k, v)| &labels[k] == v))
    };
    assert!(
        selects(&ds["spec"]["selector"]["matchLabels"]),
        "DaemonSet selector"
    );
    assert!(selects(&svc["spec"]["selector"]), "Service selector");
    let svc_labels = &svc["metadata"]["labels"];
    let monitored = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("ServiceMonitor selector");
    assert!(
        monitored.iter().all(|(k, v)| &svc_labels[k] == v),
        "the ServiceMonitor selects the Service"
    );

    let c = deploy::agent_container();
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false, "not privileged");
    assert_eq!(sc["readOnlyRootFilesystem"], true, "read-only root");
    assert_eq!(
        sc["allowPrivilegeEscalation"], false,
        "no privilege escalation"
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let metrics = format!("0.0.0.0:{METRICS_PORT}");
    assert!(
        args.windows(2)
            .any(|w| w == ["--metrics", metrics.as_str()]),
        "the agent serves metrics on {metrics}: {args:?}"
    );
    assert!(args.starts_with(&["watch", "--headless"]), "{args:?}");
    // The agent's own parser accepts the arguments.
    let help = Command::new(ctscope::binary_or_panic())
        .args(&args)
        .arg("--help")
        .output()
        .expect("ctscope");
    assert!(help.status.success(), "ctscope {args:?}: {}", text(&help));
    let port = &c["ports"][0];
    assert_eq!(port["containerPort"], METRICS_PORT, "containerPort");
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], METRICS_PORT.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert_eq!(get["port"], port["name"], "{probe} port");
    }
    assert_eq!(
        svc["spec"]["ports"][0]["port"], METRICS_PORT,
        "Service port"
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"], svc["spec"]["ports"][0]["name"],
        "ServiceMonitor port"
    );
    for key in ["requests", "limits"] {
        let r = &c["resources"][key];
        assert!(r["memory"].is_string(), "resources.{key}.memory");
    }
    // The socket directory is writable; everything else the agent reads is read-only.
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    for m in mounts {
        let writable = m["mountPath"] == "/run/ctscope";
        assert_eq!(m["readOnly"].as_bool().unwrap_or(false), !writable, "{m}");
    }
    // The systemd unit grants the same capabilities.
    let unit = std::fs::read_to_string(deploy::unit()).expect("unit");
    let caps: Vec<String> = deploy::capabilities()
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    for key in ["CapabilityBoundingSet=", "AmbientCapabilities="] {
        let line = unit
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("the unit has no {key}"));
        let mut granted: Vec<&str> = line.split_whitespace().collect();
        let mut want: Vec<&str> = caps.iter().map(String::as_str).collect();
        granted.sort_unstable();
        want.sort_unstable();
        assert_eq!(granted, want, "the unit's {key} is the DaemonSet's set");
    }
}

/// `systemd-analyze verify UNIT`: exit status and everything it printed.
fn verify(unit: &Path) -> Output {
    Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze")
}

pub fn systemd_unit() {
    // verify wants ExecStart's binary to exist: a copy of the unit runs the one under test.
    let bin = ctscope::binary_or_panic();
    let installed = "/usr/local/bin/ctscope";
    let unit = std::fs::read_to_string(deploy::unit()).expect("unit");
    assert!(
        unit.contains(&format!("ExecStart={installed} ")),
        "ExecStart"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("ctscope.service");
    let at_bin = unit.replace(installed, &bin.display().to_string());
    std::fs::write(&copy, &at_bin).expect("write unit");
    // verify exits 0 on unknown keys and bad values (it only warns): nothing printed is
    // what clean means, as a broken copy shows.
    std::fs::write(
        &copy,
        at_bin.replace("ProtectHome=yes", "ProtectHome=perhaps"),
    )
    .expect("write unit");
    let broken = verify(&copy);
    assert!(
        text(&broken).contains("perhaps"),
        "systemd-analyze verify did not flag ProtectHome=perhaps: {}",
        text(&broken)
    );
    std::fs::write(&copy, &at_bin).expect("write unit");
    let out = verify(&copy);
    assert!(
        out.status.success() && text(&out).trim().is_empty(),
        "systemd-analyze verify {}: {}\n{}",
        deploy::unit().display(),
        out.status,
        text(&out)
    );
}
