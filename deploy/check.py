"""Consistency checks on deploy/ that schema validation cannot make.

Run by `cargo xtask deploy-check` (with the Python of xtask's tool venv,
which has PyYAML) after hadolint, the Compose JSON schema and
kubernetes-validate have passed. Schemas say each file is well formed; this
says the files fit together and fit the `tally` binary: selectors select,
named ports exist, the Secret holds the key the pods read, the grace period
outlasts the shutdown deadline, every node has its own volume, seeds and
gateway lists name real nodes, and so on.

    python deploy/check.py [DEPLOY_DIR] [RENDERED_KUSTOMIZE_YAML]

Prints every problem found and exits 1 if there is any.
"""

import re
import sys
from pathlib import Path

import yaml

# The binary's defaults and the image's layout that the files rely on.
DATA_DIR = "/var/lib/tally"
NODE_HTTP_PORT = 8010
GOSSIP_PORT = 9000
GATEWAY_PORT = 8080
DISCOVERY_PORT = 8000
COMPOSE_NODES = ("node1", "node2", "node3")
# Kubernetes resources kustomization.yaml leaves out on purpose.
NOT_IN_KUSTOMIZATION = {"secret.yaml"}

problems = []


def problem(where, text):
    problems.append(f"{where}: {text}")


def seconds(duration):
    """`20s`, `1m30s`, `500ms` (humantime's common forms) as seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", str(duration))
    if not parts or "".join(n + u for n, u in parts) != str(duration):
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def flags(args):
    """`--name=value` / `--name value` pairs of a command line, in order."""
    found = []
    args = [str(a) for a in args]
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            if "=" in arg:
                name, value = arg[2:].split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                name, value = arg[2:], args[i + 1]
                i += 1
            else:
                name, value = arg[2:], None
            found.append((name, value))
        i += 1
    return found


def flag_values(args, name):
    return [value for flag, value in flags(args) if flag == name]


def one_flag(where, args, name):
    values = flag_values(args, name)
    if len(values) != 1:
        problem(where, f"expected one --{name}, found {len(values)}")
        return None
    return values[0]


# --- compose.yaml -----------------------------------------------------------


def check_compose(path):
    where = path.name
    compose = yaml.safe_load(path.read_text())
    services = compose.get("services") or {}
    volumes = compose.get("volumes") or {}
    for name in ("discovery", "gateway", *COMPOSE_NODES):
        if name not in services:
            problem(where, f"service `{name}` is missing")
    if problems:
        return

    images = {service.get("image") for service in services.values()}
    if len(images) != 1 or None in images:
        problem(where, f"every service must run the one tally image, found {images}")

    used_volumes = set()
    for name, service in services.items():
        at = f"{where}: service {name}"
        command = [str(part) for part in service.get("command") or []]
        key = (service.get("environment") or {}).get("TALLY_CLUSTER_KEY", "")
        if not str(key).startswith("${TALLY_CLUSTER_KEY:?"):
            problem(at, "TALLY_CLUSTER_KEY must come from the environment, required (${TALLY_CLUSTER_KEY:?...})")
        test = (service.get("healthcheck") or {}).get("test") or []
        if test[:3] != ["CMD", "tally", "probe"] or len(test) != 4:
            problem(at, "needs a healthcheck `[CMD, tally, probe, URL]`")
            continue
        role = command[0] if command else None
        port = {"node": NODE_HTTP_PORT, "gateway": GATEWAY_PORT, "discovery": DISCOVERY_PORT}.get(role)
        if port is None:
            problem(at, f"unknown role {role!r}")
            continue
        # Discovery depends on nothing: its liveness is its readiness.
        path = "/health" if role == "discovery" else "/ready"
        if test[3] != f"http://127.0.0.1:{port}{path}":
            problem(at, f"the healthcheck should probe http://127.0.0.1:{port}{path}, not {test[3]}")
        bind = "http-addr" if role == "node" else "addr"
        if one_flag(at, command, bind) != f"0.0.0.0:{port}":
            problem(at, f"--{bind} must be 0.0.0.0:{port}")
        for url in flag_values(command, "discovery"):
            if url != f"http://discovery:{DISCOVERY_PORT}":
                problem(at, f"--discovery {url} is not the discovery service")
        shutdown = seconds(one_flag(at, command, "shutdown-timeout") or "20s") if role == "node" else 0
        grace = seconds(service.get("stop_grace_period", "10s"))
        if role == "node" and grace <= shutdown:
            problem(at, f"stop_grace_period ({grace}s) must exceed --shutdown-timeout ({shutdown}s)")
        if role != "node":
            continue

        if one_flag(at, command, "id") != name:
            problem(at, "--id must be the service name")
        if one_flag(at, command, "gossip-addr") != f"0.0.0.0:{GOSSIP_PORT}":
            problem(at, f"--gossip-addr must be 0.0.0.0:{GOSSIP_PORT}")
        if one_flag(at, command, "http-advertise") != f"{name}:{NODE_HTTP_PORT}":
            problem(at, f"--http-advertise must be {name}:{NODE_HTTP_PORT}")
        if one_flag(at, command, "gossip-advertise") != f"{name}:{GOSSIP_PORT}":
            problem(at, f"--gossip-advertise must be {name}:{GOSSIP_PORT}")
        others = {f"{node}:{GOSSIP_PORT}" for node in COMPOSE_NODES if node != name}
        if set(flag_values(command, "seed")) != others:
            problem(at, f"--seed must name the other nodes: {sorted(others)}")
        data_dir = one_flag(at, command, "data-dir")
        mounts = [m for m in service.get("volumes") or [] if str(m).endswith(f":{data_dir}")]
        if data_dir != DATA_DIR or len(mounts) != 1:
            problem(at, f"needs --data-dir={DATA_DIR} on a volume mounted there")
            continue
        volume = str(mounts[0]).split(":")[0]
        if volume not in volumes:
            problem(at, f"volume `{volume}` is not a named volume (top-level `volumes:`)")
        if volume in used_volumes:
            problem(at, f"volume `{volume}` is shared with another node")
        used_volumes.add(volume)

    gateway = services["gateway"]
    depends = gateway.get("depends_on") or {}
    for name in ("discovery", *COMPOSE_NODES):
        if (depends.get(name) or {}).get("condition") != "service_healthy":
            problem(f"{where}: service gateway", f"must depend on `{name}` being healthy")


# --- Kubernetes -------------------------------------------------------------


def load_all(path):
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_kustomization(directory):
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = list(kustomization.get("resources") or [])
    manifests = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
    expected = sorted(set(manifests) - NOT_IN_KUSTOMIZATION)
    if sorted(listed) != expected:
        problem("kubernetes/kustomization.yaml", f"resources {sorted(listed)} should be exactly {expected}")
    images = {image.get("name") for image in kustomization.get("images") or []}
    return manifests, images


def container_env(container):
    return {env["name"]: env for env in container.get("env") or []}


def check_pod(at, workload, secrets, kustomize_images):
    template = workload["spec"]["template"]
    workload_selector = workload["spec"]["selector"].get("matchLabels")
    labels = template["metadata"].get("labels") or {}
    if not matches(workload_selector, labels):
        problem(at, "selector.matchLabels do not select the pod template's labels")
    spec = template["spec"]
    if spec.get("enableServiceLinks") is not False:
        problem(at, "enableServiceLinks must be false (service variables like TALLY_PORT would reach the binary as flags)")
    pod_security = spec.get("securityContext") or {}
    if pod_security.get("runAsNonRoot") is not True or not pod_security.get("runAsUser"):
        problem(at, "the pod must run as a non-root uid (runAsNonRoot, runAsUser)")
    mounted = {v["name"] for v in spec.get("volumes") or []}
    mounted |= {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates") or []}
    for container in spec["containers"]:
        c_at = f"{at} container {container['name']}"
        image = container.get("image", "").rsplit(":", 1)[0]
        if image not in kustomize_images:
            problem(c_at, f"image {image!r} is not in kustomization.yaml's images")
        env = container_env(container)
        if "TALLY_CLUSTER_KEY" not in env:
            problem(c_at, "TALLY_CLUSTER_KEY is not set")
        for name, var in env.items():
            ref = (var.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                secret = secrets.get(ref["name"])
                keys = set((secret or {}).get("stringData") or {}) | set((secret or {}).get("data") or {})
                if secret is None or ref["key"] not in keys:
                    problem(c_at, f"{name} reads secret {ref['name']}/{ref['key']}, which secret.yaml does not define")
        for arg in container.get("args") or []:
            for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(arg)):
                if var not in env:
                    problem(c_at, f"argument {arg!r} uses $({var}), which is not in env")
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            http = (container.get(probe) or {}).get("httpGet")
            if http is None:
                if probe != "startupProbe":
                    problem(c_at, f"needs an httpGet {probe}")
                continue
            if http.get("port") not in ports and http.get("port") not in ports.values():
                problem(c_at, f"{probe} port {http.get('port')!r} is not a container port")
            wanted = "/ready" if probe == "readinessProbe" else "/health"
            if http.get("path") != wanted:
                problem(c_at, f"{probe} should GET {wanted}")
        resources = container.get("resources") or {}
        for kind in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(kind) or {}):
                problem(c_at, f"resources.{kind} needs cpu and memory")
        security = container.get("securityContext") or {}
        if (
            security.get("allowPrivilegeEscalation") is not False
            or security.get("readOnlyRootFilesystem") is not True
            or (security.get("capabilities") or {}).get("drop") != ["ALL"]
        ):
            problem(c_at, "securityContext: no privilege escalation, read-only root, drop ALL capabilities")
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in mounted:
                problem(c_at, f"mounts unknown volume {mount['name']!r}")
    return ports_of(spec)


def ports_of(pod_spec):
    return {
        p.get("name"): p["containerPort"] for c in pod_spec["containers"] for p in c.get("ports") or []
    }


def check_kubernetes(directory, rendered):
    manifests, kustomize_images = check_kustomization(directory)
    resources = [(name, doc) for name in manifests for doc in load_all(directory / name)]
    if rendered is not None:
        # What `kubectl apply -k` sends must be what the files say.
        rendered_names = {(d["kind"], d["metadata"]["name"]) for d in load_all(rendered)}
        listed = {(d["kind"], d["metadata"]["name"]) for n, d in resources if n not in NOT_IN_KUSTOMIZATION}
        if rendered_names != listed:
            problem("kubernetes", f"kustomize renders {sorted(rendered_names)}, the files hold {sorted(listed)}")
    by_kind = {}
    for name, doc in resources:
        if "namespace" in doc["metadata"]:
            problem(f"kubernetes/{name}", "names a namespace: the manifests must stay namespace-agnostic")
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = (name, doc)
    secrets = {n: doc for n, (_, doc) in by_kind.get("Secret", {}).items()}
    services = by_kind.get("Service", {})
    workloads = {}  # name -> (kind, file, doc, pod labels, container ports)
    for kind in ("StatefulSet", "Deployment"):
        for name, (file, doc) in by_kind.get(kind, {}).items():
            at = f"kubernetes/{file} {kind} {name}"
            ports = check_pod(at, doc, secrets, kustomize_images)
            labels = doc["spec"]["template"]["metadata"].get("labels") or {}
            workloads[name] = (kind, file, doc, labels, ports)

    sets = by_kind.get("StatefulSet", {})
    if len(sets) != 1:
        problem("kubernetes", f"expected one StatefulSet of nodes, found {sorted(sets)}")
        return
    (node_set_name, (node_file, node_set)), = sets.items()
    at = f"kubernetes/{node_file} StatefulSet {node_set_name}"
    spec = node_set["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    args = container.get("args") or []
    if args[:1] != ["node"]:
        problem(at, "the container must run `node`")
    shutdown = seconds(one_flag(at, args, "shutdown-timeout") or "0s")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if not shutdown or grace <= shutdown:
        problem(at, f"terminationGracePeriodSeconds ({grace}) must exceed --shutdown-timeout ({shutdown}s)")
    if container.get("startupProbe") is None:
        problem(at, "needs a startupProbe (log replay can be long)")
    headless = services.get(spec.get("serviceName"), (None, {}))[1]
    if (headless.get("spec") or {}).get("clusterIP") != "None":
        problem(at, f"serviceName {spec.get('serviceName')!r} must be a headless Service (clusterIP: None)")
    elif headless["spec"].get("publishNotReadyAddresses") is not True:
        problem(at, "the headless Service must publish not-ready addresses (peers find each other before ready)")
    dns = f"{spec.get('serviceName')}.$(POD_NAMESPACE).svc.$(CLUSTER_DOMAIN)"
    own = f"$(POD_NAME).{dns}"
    expected = {
        "id": "$(POD_NAME)",
        "data-dir": DATA_DIR,
        "http-addr": f"0.0.0.0:{NODE_HTTP_PORT}",
        "gossip-addr": f"0.0.0.0:{GOSSIP_PORT}",
        "http-advertise": f"{own}:{NODE_HTTP_PORT}",
        "gossip-advertise": f"{own}:{GOSSIP_PORT}",
        "seed-dns": f"{dns}:{GOSSIP_PORT}",
    }
    for flag, value in expected.items():
        if one_flag(at, args, flag) != value:
            problem(at, f"--{flag} should be {value}")
    env = container_env(container)
    for var, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        if ((env.get(var, {}).get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") != field:
            problem(at, f"{var} must come from the downward API ({field})")
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates") or []}
    data_mounts = [m for m in container.get("volumeMounts") or [] if m["mountPath"] == DATA_DIR]
    if len(data_mounts) != 1 or data_mounts[0]["name"] not in claims:
        problem(at, f"{DATA_DIR} must be mounted from a volumeClaimTemplate")
    if (pod.get("securityContext") or {}).get("fsGroup") is None:
        problem(at, "needs a pod fsGroup so the image's user can write the volume")

    replicas = spec.get("replicas", 1)
    node_hosts = {f"{node_set_name}-{i}.{dns}:{NODE_HTTP_PORT}" for i in range(replicas)}
    gateways = [w for w in workloads.values() if w[0] == "Deployment"]
    if len(gateways) != 1:
        problem("kubernetes", "expected one Deployment (the gateway)")
    for _, file, doc, _, _ in gateways:
        g_at = f"kubernetes/{file} Deployment {doc['metadata']['name']}"
        g_args = doc["spec"]["template"]["spec"]["containers"][0].get("args") or []
        if g_args[:1] != ["gateway"]:
            problem(g_at, "the container must run `gateway`")
        if one_flag(g_at, g_args, "addr") != f"0.0.0.0:{GATEWAY_PORT}":
            problem(g_at, f"--addr must be 0.0.0.0:{GATEWAY_PORT}")
        if set(flag_values(g_args, "node")) != node_hosts:
            problem(g_at, f"--node must list the StatefulSet's {replicas} nodes: {sorted(node_hosts)}")

    for name, (file, service) in services.items():
        s_at = f"kubernetes/{file} Service {name}"
        selected = [w for w in workloads.values() if matches(service["spec"].get("selector"), w[3])]
        if len(selected) != 1:
            problem(s_at, f"selects {len(selected)} workloads, not one")
            continue
        ports = selected[0][4]
        for port in service["spec"].get("ports") or []:
            target = port.get("targetPort", port["port"])
            if target not in ports and target not in ports.values():
                problem(s_at, f"targetPort {target!r} is not a port of {selected[0][2]['metadata']['name']}")
    for name, (file, pdb) in by_kind.get("PodDisruptionBudget", {}).items():
        selector = pdb["spec"]["selector"].get("matchLabels")
        selected = [w for w in workloads.values() if matches(selector, w[3])]
        if len(selected) != 1:
            problem(f"kubernetes/{file} PodDisruptionBudget {name}", f"selects {len(selected)} workloads, not one")
    for workload in workloads:
        if not any(
            matches(pdb["spec"]["selector"].get("matchLabels"), workloads[workload][3])
            for _, pdb in by_kind.get("PodDisruptionBudget", {}).values()
        ):
            problem(f"kubernetes {workload}", "has no PodDisruptionBudget")


def main():
    directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    rendered = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    checked = []
    for name, check in (("compose.yaml", check_compose), ("kubernetes", None)):
        try:
            if check:
                check(directory / name)
            else:
                check_kubernetes(directory / name, rendered)
            checked.append(name)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, yaml.YAMLError) as error:
            problem(name, f"unexpected shape ({type(error).__name__}: {error})")
    for line in problems:
        print(f"deploy check: {line}")
    if problems:
        print(f"deploy check: {len(problems)} problem(s)")
        return 1
    print(f"deploy check: {', '.join(checked)} consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
