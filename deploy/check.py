#!/usr/bin/env python3
"""Checks the Kubernetes manifests in deploy/kubernetes against each other and the code.

What it checks (there is no cluster here, so this is what can be checked):
  - every file parses as YAML, every document has apiVersion, kind and metadata.name, and
    kustomization.yaml lists every manifest;
  - the Deployment runs at least 2 replicas of the container, whose readiness probe GETs
    /readyz and liveness probe GETs /healthz on the admin port, and both routes are in
    docs/openapi.yaml (a Rust test keeps that file in step with the admin API's routes);
  - the ConfigMap's causeway.toml parses (tomllib), uses PostgreSQL from ${DATABASE_URL},
    binds the admin API and the MLLP listener on the container ports the probes and the
    Service use, and mounts where the container's --config points;
  - every secretKeyRef names the Secret and one of its keys; environment variables the
    configuration reads (${VAR}) are all set; the Services select the pod's labels and
    target its named ports.

Usage: deploy/check.py [--write-config PATH]   (PATH: the ConfigMap's causeway.toml, for
`causeway config check`). Prints one line per manifest and exits non-zero on a problem.
"""
import pathlib
import re
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "kubernetes"
problems = []


def check(cond, what):
    if not cond:
        problems.append(what)
    return cond


def port_of(bind):
    return int(bind.rsplit(":", 1)[1])


def main(argv):
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            kind = doc.get("kind")
            name = (doc.get("metadata") or {}).get("name")
            if kind != "Kustomization":
                check(doc.get("apiVersion") and kind and name, f"{path.name}: apiVersion, kind, metadata.name")
            docs.setdefault(kind, []).append((path.name, doc))
            print(f"{path.name}: {kind} {name or ''}".rstrip())

    kust = docs["Kustomization"][0][1]
    listed = set(kust["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    check(listed == files, f"kustomization resources {sorted(listed)} != files {sorted(files)}")

    (_, dep), = docs["Deployment"]
    spec = dep["spec"]
    check(spec["replicas"] >= 2, "Deployment: at least 2 replicas")
    pod = spec["template"]
    labels = pod["metadata"]["labels"]
    check(spec["selector"]["matchLabels"].items() <= labels.items(), "Deployment selector matches pod labels")
    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check({"mllp", "admin"} <= ports.keys(), f"container ports {ports}")

    openapi = yaml.safe_load((ROOT / "docs" / "openapi.yaml").read_text())
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = c[probe]["httpGet"]
        check(get["path"] == path, f"{probe} path {get['path']} != {path}")
        check(get["port"] in ("admin", ports.get("admin")), f"{probe} port {get['port']} is not the admin port")
        check(path in openapi["paths"] and "get" in openapi["paths"][path], f"{path} not a GET route in docs/openapi.yaml")
        check(openapi["paths"][path]["get"].get("security") == [], f"{path} needs a token in openapi.yaml: probes send none")

    (_, cm), = docs["ConfigMap"]
    cfg_text = cm["data"]["causeway.toml"]
    cfg = tomllib.loads(cfg_text)
    check(cfg["store"].get("postgres") == "${DATABASE_URL}", "store.postgres reads ${DATABASE_URL}")
    check(port_of(cfg["admin"]["bind"]) == ports["admin"], "admin.bind port is the admin container port")
    check(cfg["admin"]["bind"].startswith("0.0.0.0:"), "admin API reachable by the kubelet (not loopback)")
    for ch in cfg["channel"]:
        check(port_of(ch["source"]["bind"]) == ports["mllp"], f"channel {ch['name']} binds the mllp port")

    args = c["args"]
    config_path = args[args.index("--config") + 1]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    found = False
    for name, mount in mounts.items():
        v = vols[name]
        if "configMap" in v and config_path == f"{mount}/causeway.toml":
            found = check(v["configMap"]["name"] == cm["metadata"]["name"], "config volume names the ConfigMap")
    check(found, f"--config {config_path} is not the mounted ConfigMap's causeway.toml")

    (_, secret), = docs["Secret"]
    keys = set((secret.get("stringData") or {}).keys()) | set((secret.get("data") or {}).keys())
    env = {}
    for e in c.get("env", []):
        ref = (e.get("valueFrom") or {}).get("secretKeyRef")
        if ref:
            check(ref["name"] == secret["metadata"]["name"] and ref["key"] in keys, f"env {e['name']}: secret key {ref}")
        env[e["name"]] = e
    for var in re.findall(r"\$\{([A-Z0-9_]+)\}", cfg_text):
        check(var in env, f"the configuration reads ${{{var}}}, which the container does not set")

    services = docs["Service"]
    targets = set()
    for _, svc in services:
        check(svc["spec"]["selector"].items() <= labels.items(), f"Service {svc['metadata']['name']} selects the pods")
        for p in svc["spec"]["ports"]:
            check(p["targetPort"] in ports or p["targetPort"] in ports.values(), f"Service port {p} targets a container port")
            targets.add(p["targetPort"])
    check("mllp" in targets, "a Service exposes MLLP")

    if len(argv) == 2 and argv[0] == "--write-config":
        pathlib.Path(argv[1]).write_text(cfg_text)

    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    print("deploy/kubernetes: OK" if not problems else f"deploy/kubernetes: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
