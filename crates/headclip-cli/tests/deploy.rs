//! The Kubernetes example in deploy/, checked against the server: the manifest's arguments start
//! `headclip serve` (with the tiny fixture model in place of the mounted weights), every probe's
//! path answers 200 on it and its port is the one `--addr` listens on, the Service and the
//! autoscaler point at what exists, and the grace period outlasts the SIGTERM drain.

use serde::Deserialize as _;
use serde_json::Value;

mod common;
#[path = "common/server.rs"]
mod server;

use common::{repo, tiny};
use server::{get, Server};

/// The server's drain on SIGTERM beyond `--timeout-ms` (`Config::shutdown_grace`).
const DRAIN_EXTRA_S: u64 = 5;
/// `--timeout-ms` when not given.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

fn manifests() -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes.yaml")).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "one {kind} in deploy/kubernetes.yaml");
    found[0]
}

fn container(deployment: &Value) -> &Value {
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().expect("arguments are strings").to_string())
        .collect()
}

fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    Some(args.get(at + 1).expect("a value after the flag"))
}

/// A probe's or Service's port: a number, or the name of one of the container's ports.
fn resolve_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = port.as_str().expect("a port number or name");
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

fn listen_port(args: &[String]) -> u64 {
    let addr: std::net::SocketAddr = arg(args, "--addr").expect("--addr").parse().unwrap();
    assert!(
        !addr.ip().is_loopback(),
        "--addr {addr} is loopback: the kubelet could not reach it"
    );
    u64::from(addr.port())
}

#[test]
fn probes_answer_on_the_server_and_its_port() {
    let docs = manifests();
    let container = container(of_kind(&docs, "Deployment"));
    let args = args(container);
    assert_eq!(args[0], "serve");
    let port = listen_port(&args);
    // The manifest's own arguments, but the fixture model and a free loopback port.
    let mut local: Vec<String> = args[1..].to_vec();
    for (flag, value) in [
        ("--weights", tiny("clip_openai.safetensors")),
        ("--params", tiny("params_learned.safetensors")),
    ] {
        let at = local.iter().position(|a| a == flag).unwrap() + 1;
        local[at] = value.to_str().unwrap().to_string();
    }
    let at = local.iter().position(|a| a == "--addr").unwrap();
    local.drain(at..at + 2);
    let local: Vec<&str> = local.iter().map(String::as_str).collect();
    let server = Server::start_with(&local);

    let mut probes = 0;
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let http = &container[probe]["httpGet"];
        let path = http["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{probe} has no path"));
        assert_eq!(
            resolve_port(container, &http["port"]),
            port,
            "{probe}'s port"
        );
        let reply = get(&server.url(path));
        assert_eq!(reply.status, 200, "{probe} {path}: {}", reply.text());
        probes += 1;
    }
    assert_eq!(probes, 3);
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        "/v2/health/ready"
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        "/v2/health/live"
    );
    // A path that is not a route gets 404, so the 200s above mean something.
    assert_eq!(get(&server.url("/v2/health/alive")).status, 404);
}

#[test]
fn grace_period_outlasts_the_drain() {
    let docs = manifests();
    let deployment = of_kind(&docs, "Deployment");
    let container = container(deployment);
    let args = args(container);
    let timeout_ms = arg(&args, "--timeout-ms").map_or(DEFAULT_TIMEOUT_MS, |v| v.parse().unwrap());
    let pre_stop_s = match container["lifecycle"]["preStop"]["exec"]["command"].as_array() {
        Some(cmd) => {
            assert_eq!(cmd[0], "sleep", "a preStop other than a pause");
            cmd[1].as_str().unwrap().parse::<u64>().unwrap()
        }
        None => 0,
    };
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    let drain = pre_stop_s + timeout_ms.div_ceil(1000) + DRAIN_EXTRA_S;
    assert!(
        grace > drain,
        "terminationGracePeriodSeconds {grace} is not longer than the drain ({drain} s)"
    );
}

#[test]
fn service_autoscaler_volume_and_image_fit_the_deployment() {
    let docs = manifests();
    let deployment = of_kind(&docs, "Deployment");
    let container = container(deployment);
    let port = listen_port(&args(container));
    let name = deployment["metadata"]["name"].as_str().unwrap();

    let service = of_kind(&docs, "Service");
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );
    let target = &service["spec"]["ports"][0]["targetPort"];
    assert_eq!(resolve_port(container, target), port);

    let hpa = of_kind(&docs, "HorizontalPodAutoscaler");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], name);
    // Utilization is a share of the requests: they must be set.
    for resource in ["cpu", "memory"] {
        assert!(
            container["resources"]["requests"][resource].is_string(),
            "no {resource} request"
        );
    }

    // The weights come from the claim, mounted where the arguments look.
    let claim = of_kind(&docs, "PersistentVolumeClaim");
    let volumes = deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    let weights = volumes
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"])
        .expect("a volume from the claim");
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == weights["name"])
        .expect("the weights volume mounted");
    let mount_path = mount["mountPath"].as_str().unwrap();
    let args = args(container);
    for flag in ["--weights", "--params"] {
        let path = arg(&args, flag).unwrap();
        assert!(path.starts_with(&format!("{mount_path}/")), "{flag} {path}");
    }

    // The image: this version, exposing the port, libtorch installed as the project does.
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(container["image"], format!("headclip:{version}"));
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    assert!(dockerfile.contains(&format!("EXPOSE {port}\n")));
    assert!(dockerfile.contains(&format!("headclip:{version} .")));
    assert!(dockerfile.contains("scripts/setup-libtorch.sh"));
    assert_eq!(
        dockerfile.matches("\nFROM ").count(),
        2,
        "build and runtime stages"
    );
}
