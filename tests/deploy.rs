//! `deploy/kubernetes`: every manifest is one Kubernetes accepts (the `kubernetes-validate`
//! schemas; the KEDA and prometheus-operator objects, which it has no schema for, by their
//! required fields), every `MDTI_*` name is a setting the worker has, the ConfigMap parses as
//! the worker's own command line with one shared tenant quota, and the pieces point at each
//! other: the ScaledObject at the Deployment and at the queues the worker consumes, the probes
//! and the PodMonitor at the port the worker listens on, every secret reference at a key of the
//! Secrets' example.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{CommandFactory, Parser};
use mdti_worker::cli::{Cli, Command as Subcommand};
use mdti_worker::lane::Lane;
use serde_json::Value;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");
/// Documents the Secrets the manifests read; applied by hand, so not in the kustomization.
const SECRETS_EXAMPLE: &str = "secrets.example.yaml";

/// One object of one manifest file.
struct Object {
    file: String,
    doc: Value,
}

impl Object {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or("")
    }
}

fn read(file: &str) -> String {
    let path = Path::new(DIR).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse(file: &str) -> Vec<Object> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(&read(file))
        .unwrap_or_else(|e| panic!("{file} is not YAML: {e}"));
    docs.into_iter()
        .filter(|doc| !doc.is_null())
        .map(|doc| Object {
            file: file.to_owned(),
            doc,
        })
        .collect()
}

fn kustomization() -> Value {
    parse("kustomization.yaml").remove(0).doc
}

/// The files `kubectl apply -k` applies, in the kustomization's order.
fn resources() -> Vec<String> {
    kustomization()["resources"]
        .as_array()
        .expect("kustomization.yaml lists resources")
        .iter()
        .map(|r| r.as_str().expect("a resource is a file name").to_owned())
        .collect()
}

/// Every object of the kustomization's resources and of the Secrets' example.
fn objects() -> Vec<Object> {
    let mut files = resources();
    files.push(SECRETS_EXAMPLE.to_owned());
    files.iter().flat_map(|file| parse(file)).collect()
}

fn the(objects: &[Object], kind: &str) -> Value {
    let found: Vec<&Object> = objects.iter().filter(|o| o.kind() == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind} in the manifests");
    found[0].doc.clone()
}

fn pod_spec(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

fn worker_container(deployment: &Value) -> &Value {
    let containers = pod_spec(deployment)["containers"]
        .as_array()
        .expect("containers");
    assert_eq!(containers.len(), 1, "one container, the worker");
    &containers[0]
}

fn config_map_data(objects: &[Object]) -> BTreeMap<String, String> {
    let data = the(objects, "ConfigMap")["data"].clone();
    serde_json::from_value(data).expect("ConfigMap data is strings")
}

/// `kubectl apply`'s API groups have no dot (`v1`, `apps/v1`); a CRD's group is a domain.
fn is_built_in(api_version: &str) -> bool {
    !api_version
        .split_once('/')
        .is_some_and(|(group, _)| group.contains('.'))
}

fn kubernetes_validate(files: &[String]) -> (bool, String) {
    let output = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(files)
        .current_dir(DIR)
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "`kubernetes-validate` could not be run ({error}): run `bash scripts/services.sh` \
                 (it installs it with pip: `pip install kubernetes-validate`)"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn every_manifest_passes_the_kubernetes_schemas_and_only_crds_go_without_one() {
    let objects = objects();
    let files: BTreeSet<String> = objects.iter().map(|o| o.file.clone()).collect();
    let files: Vec<String> = files.into_iter().collect();
    // --strict: a property the schema does not know (a misspelt `readinesProbe`) is an error.
    let (success, report) = kubernetes_validate(&files);
    assert!(success, "kubernetes-validate refused a manifest:\n{report}");
    for object in &objects {
        let passed = format!(
            "INFO {} passed for resource {}/{}",
            object.file,
            object.kind().to_lowercase(),
            object.name()
        );
        let no_schema = format!(
            "WARN {} Couldn't find schema for kind {}",
            object.file,
            object.kind()
        );
        let api_version = object.doc["apiVersion"].as_str().unwrap_or("");
        let validated = report.lines().any(|l| l.starts_with(&passed));
        if is_built_in(api_version) {
            assert!(
                validated,
                "{} {} was not validated:\n{report}",
                object.file,
                object.kind()
            );
        } else {
            // Checked field by field by the tests below, unless a schema has come with the tool.
            let skipped = report.lines().any(|l| l.starts_with(&no_schema));
            assert!(
                validated || skipped,
                "{}: no word on {}:\n{report}",
                object.file,
                object.kind()
            );
        }
    }
}

#[test]
fn the_kustomization_applies_every_manifest_but_the_secrets_example() {
    let mut on_disk: Vec<String> = std::fs::read_dir(DIR)
        .expect("deploy/kubernetes")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .filter(|name| name != SECRETS_EXAMPLE)
        .collect();
    on_disk.sort();
    let mut listed = resources();
    listed.sort();
    assert_eq!(listed, on_disk);

    let kustomization = kustomization();
    let deployment = the(&objects(), "Deployment");
    let image = worker_container(&deployment)["image"].as_str().unwrap();
    let image_name = image.split(':').next().unwrap();
    let renamed: Vec<&str> = kustomization["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(
        renamed,
        [image_name],
        "kustomization.yaml sets the worker's image"
    );
}

/// The worker's settings as clap has them: the `worker` subcommand's and the global ones.
fn worker_settings() -> Vec<clap::Arg> {
    let mut cli = Cli::command();
    cli.build();
    let worker = cli
        .find_subcommand("worker")
        .expect("a worker subcommand")
        .clone();
    worker.get_arguments().cloned().collect()
}

fn env_name(arg: &clap::Arg) -> Option<String> {
    arg.get_env().map(|e| e.to_string_lossy().into_owned())
}

/// Every `MDTI_` name in `text`, comments included (`MDTI_*` alone is no name).
fn mdti_names(text: &str) -> BTreeSet<String> {
    text.match_indices("MDTI_")
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > "MDTI_".len())
        .collect()
}

#[test]
fn every_mdti_name_in_the_manifests_and_the_compose_file_is_a_worker_setting() {
    let settings: BTreeSet<String> = worker_settings().iter().filter_map(env_name).collect();
    assert!(settings.contains("MDTI_TENANT_QUOTA"), "{settings:?}");
    let mut files: Vec<PathBuf> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"));
    let mut seen = 0;
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let names = mdti_names(&text);
        seen += names.len();
        let unknown: Vec<&String> = names.difference(&settings).collect();
        assert!(
            unknown.is_empty(),
            "{} names settings `mdti-worker worker` does not have: {unknown:?}",
            path.display()
        );
    }
    assert!(seen > 10, "the manifests name the worker's settings");
}

/// The ConfigMap as the worker's command line: each setting as its flag (a flag that takes no
/// value, such as `--migrate`, given when its value is true).
fn config_map_as_flags(data: &BTreeMap<String, String>) -> Vec<String> {
    let settings = worker_settings();
    let mut args = vec!["mdti-worker".to_owned(), "worker".to_owned()];
    for (name, value) in data {
        let arg = settings
            .iter()
            .find(|a| env_name(a).as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} is no worker setting"));
        let long = arg.get_long().expect("every setting has a flag");
        if arg.get_action().takes_values() {
            args.push(format!("--{long}={value}"));
        } else if value
            .parse::<bool>()
            .unwrap_or_else(|_| panic!("{name}={value:?}"))
        {
            args.push(format!("--{long}"));
        }
    }
    args
}

/// The `worker` command the pods run, parsed by the worker's own parser from the ConfigMap.
fn worker_command(objects: &[Object]) -> Box<mdti_worker::cli::worker::WorkerCmd> {
    let args = config_map_as_flags(&config_map_data(objects));
    let cli = Cli::try_parse_from(&args)
        .unwrap_or_else(|e| panic!("the ConfigMap as the command line {args:?}:\n{e}"));
    match cli.command {
        Subcommand::Worker(cmd) => cmd,
        other => panic!("parsed as {other:?}"),
    }
}

#[test]
fn the_config_map_is_settings_the_worker_accepts_with_one_tenant_quota_shared_by_every_pod() {
    let objects = objects();
    let cmd = worker_command(&objects);
    let fleet = cmd
        .fleet
        .settings(&cmd.graph.tenant_id, cmd.graph.graph_burst)
        .expect("the fleet settings are valid")
        .expect("MDTI_TENANT_QUOTA is set, so pods share the quota instead of multiplying it");
    let quota: f64 = config_map_data(&objects)["MDTI_TENANT_QUOTA"]
        .parse()
        .unwrap();
    assert_eq!(fleet.tenant_quota, quota);
    assert!(fleet.lease_expiry > fleet.heartbeat_interval);
    assert!(cmd.worker.migrate, "pods apply migrations at start");
}

/// (Secret name, key) of a `secretKeyRef` or a `secretTargetRef` item.
fn secret_key(reference: &Value) -> (String, String) {
    let field = |f: &str| reference[f].as_str().unwrap_or("").to_owned();
    (field("name"), field("key"))
}

/// Every (Secret, key) the Secrets' example defines.
fn example_secret_keys(objects: &[Object]) -> BTreeSet<(String, String)> {
    objects
        .iter()
        .filter(|o| o.kind() == "Secret")
        .flat_map(|secret| {
            let keys: Vec<String> = secret.doc["stringData"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(key, _)| key.clone())
                .collect();
            keys.into_iter().map(|key| (secret.name().to_owned(), key))
        })
        .collect()
}

#[test]
fn passwords_come_from_secrets_and_the_client_secret_is_a_mounted_file() {
    let objects = objects();
    let secrets = example_secret_keys(&objects);
    let config = config_map_data(&objects);
    // What the worker itself keeps out of its help and logs carries a password.
    let hidden: BTreeSet<String> = worker_settings()
        .iter()
        .filter(|a| a.is_hide_env_values_set())
        .filter_map(env_name)
        .collect();
    for name in &hidden {
        assert!(!config.contains_key(name), "{name} is in the ConfigMap");
    }
    let deployment = the(&objects, "Deployment");
    let container = worker_container(&deployment);
    let env = container["env"].as_array().expect("env");
    let from_secret: BTreeMap<String, (String, String)> = env
        .iter()
        .map(|var| {
            let name = var["name"].as_str().unwrap().to_owned();
            assert!(
                hidden.contains(&name),
                "{name} in env instead of the ConfigMap"
            );
            assert!(
                var.get("value").is_none(),
                "{name} is written in the manifest"
            );
            let reference = secret_key(&var["valueFrom"]["secretKeyRef"]);
            assert!(
                secrets.contains(&reference),
                "{name}: no {reference:?} in the example"
            );
            (name, reference)
        })
        .collect();
    let names: Vec<&str> = from_secret.keys().map(String::as_str).collect();
    assert_eq!(names, ["MDTI_AMQP_URL", "MDTI_DATABASE_URL"]);

    let file = &config["MDTI_CLIENT_SECRET_FILE"];
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .expect("MDTI_CLIENT_SECRET_FILE lies in a mounted volume");
    let volume = pod_spec(&deployment)["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    let secret_name = volume["secret"]["secretName"]
        .as_str()
        .expect("a secret volume");
    let relative = &file[mount["mountPath"].as_str().unwrap().len() + 1..];
    let item = volume["secret"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["path"] == relative)
        .expect("the file is one of the volume's items");
    let key = (
        secret_name.to_owned(),
        item["key"].as_str().unwrap().to_owned(),
    );
    assert!(secrets.contains(&key), "no {key:?} in the example");
}

#[test]
fn the_pod_runs_as_a_numeric_non_root_user_on_a_read_only_root_filesystem() {
    let deployment = the(&objects(), "Deployment");
    let pod = &pod_spec(&deployment)["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true);
    let user = pod["runAsUser"].as_u64().expect("a numeric user");
    assert_ne!(user, 0);
    let container = &worker_container(&deployment)["securityContext"];
    assert_eq!(container["readOnlyRootFilesystem"], true);
    assert_eq!(container["allowPrivilegeEscalation"], false);
    assert_eq!(
        container["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
}

/// A CPU (`250m`, `1`) or memory (`128Mi`, `1Gi`) quantity, in millicores or bytes.
fn quantity(text: &str) -> u64 {
    let units = [("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10), ("m", 1)];
    for (suffix, scale) in units {
        if let Some(number) = text.strip_suffix(suffix) {
            return number.parse::<u64>().expect(text) * scale;
        }
    }
    text.parse::<u64>().expect(text) * 1000
}

#[test]
fn the_worker_asks_for_its_measured_memory_and_its_limits_are_above_its_requests() {
    let deployment = the(&objects(), "Deployment");
    let resources = &worker_container(&deployment)["resources"];
    for what in ["cpu", "memory"] {
        let request = quantity(resources["requests"][what].as_str().expect(what));
        let limit = quantity(resources["limits"][what].as_str().expect(what));
        assert!(
            request > 0 && request <= limit,
            "{what}: {request} > {limit}"
        );
    }
    // The README's peak RSS of the worker alone: 56-67 MiB (Benchmark), the top of it.
    let memory = quantity(resources["requests"]["memory"].as_str().unwrap());
    assert!(
        memory >= 67 << 20,
        "a memory request below the measured peak"
    );
}

/// The container port named `name`.
fn container_port(deployment: &Value, name: &str) -> u64 {
    worker_container(deployment)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

#[test]
fn the_probes_ask_the_health_endpoints_on_the_port_the_worker_listens_on() {
    let objects = objects();
    let deployment = the(&objects, "Deployment");
    let container = worker_container(&deployment);
    let listen = worker_command(&objects)
        .metrics_listen
        .0
        .expect("MDTI_METRICS_LISTEN is on");
    assert!(
        listen.ip().is_unspecified(),
        "{listen}: the kubelet cannot reach it"
    );
    for (probe, path) in [
        ("startupProbe", "/healthz"),
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
    ] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        let port = get["port"].as_str().expect("a named port");
        assert_eq!(container_port(&deployment, port), u64::from(listen.port()));
    }
}

/// Whether every label `selector` asks for is on the Deployment's pods.
fn selects_the_pods(selector: &Value, deployment: &Value) -> bool {
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let wanted = selector.as_object().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| &labels[k] == v)
}

#[test]
fn the_pod_monitor_and_the_service_reach_the_pods_metrics_port() {
    let objects = objects();
    let deployment = the(&objects, "Deployment");
    let monitor = the(&objects, "PodMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert!(selects_the_pods(
        &monitor["spec"]["selector"]["matchLabels"],
        &deployment
    ));
    let endpoints = monitor["spec"]["podMetricsEndpoints"].as_array().unwrap();
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        assert_eq!(endpoint["path"], "/metrics");
        container_port(&deployment, endpoint["port"].as_str().expect("a port name"));
    }
    let service = the(&objects, "Service");
    assert!(selects_the_pods(&service["spec"]["selector"], &deployment));
    for port in service["spec"]["ports"].as_array().unwrap() {
        container_port(
            &deployment,
            port["targetPort"].as_str().expect("a port name"),
        );
    }
}

#[test]
fn keda_scales_the_deployment_on_both_lanes_queues_the_worker_consumes() {
    let objects = objects();
    let scaled = the(&objects, "ScaledObject");
    let auth = the(&objects, "TriggerAuthentication");
    let deployment = the(&objects, "Deployment");
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(auth["apiVersion"], "keda.sh/v1alpha1");
    let target = &scaled["spec"]["scaleTargetRef"];
    assert_eq!(target["name"], deployment["metadata"]["name"]);
    assert!(target.get("kind").is_none_or(|kind| kind == "Deployment"));
    let min = scaled["spec"]["minReplicaCount"]
        .as_u64()
        .expect("minReplicaCount");
    let max = scaled["spec"]["maxReplicaCount"]
        .as_u64()
        .expect("maxReplicaCount");
    assert!(1 <= min && min <= max, "{min}..{max}");
    assert!(
        deployment["spec"].get("replicas").is_none(),
        "KEDA owns the count"
    );

    let topology = worker_command(&objects).broker.topology();
    let expected: BTreeSet<String> = Lane::ALL.iter().map(|l| topology.lane_queue(*l)).collect();
    let mut queues = BTreeSet::new();
    for trigger in scaled["spec"]["triggers"].as_array().expect("triggers") {
        assert_eq!(trigger["type"], "rabbitmq");
        assert_eq!(
            trigger["authenticationRef"]["name"],
            auth["metadata"]["name"]
        );
        let metadata = &trigger["metadata"];
        assert_eq!(metadata["mode"], "QueueLength");
        let value: f64 = metadata["value"]
            .as_str()
            .expect("a string")
            .parse()
            .unwrap();
        assert!(value > 0.0);
        queues.insert(metadata["queueName"].as_str().unwrap().to_owned());
    }
    assert_eq!(queues, expected);

    // The scaler connects with the AMQP URL the worker uses.
    let refs = auth["spec"]["secretTargetRef"]
        .as_array()
        .expect("secretTargetRef");
    let host = refs
        .iter()
        .find(|r| r["parameter"] == "host")
        .expect("host");
    let env = worker_container(&deployment)["env"].as_array().unwrap();
    let amqp = env.iter().find(|v| v["name"] == "MDTI_AMQP_URL").unwrap();
    assert_eq!(
        secret_key(host),
        secret_key(&amqp["valueFrom"]["secretKeyRef"])
    );
}
