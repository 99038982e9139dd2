"""Offline checks of the deployment files: that they are consistent with each other and with
the worker they deploy (run by scripts/check-deploy.sh, which also validates the manifests
against the Kubernetes schemas and the Prometheus config with promtool).

Usage: python deploy/check.py HTC_BINARY
"""

import re
import subprocess
import sys
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)


def flags_of(binary, *cmd):
    """The long flags `htc CMD --help` documents."""
    out = subprocess.run([binary, *cmd, "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"--[a-z][a-z0-9-]*", out))


def main(binary):
    serve_flags = flags_of(binary, "serve")

    # --- Dockerfile -------------------------------------------------------------------------
    df = DockerfileParser(path=str(ROOT / "Dockerfile"))
    stages, current = {}, None
    for ins in df.structure:
        if ins["instruction"] == "FROM":
            parts = ins["value"].split()
            current = parts[-1] if len(parts) >= 3 and parts[-2].upper() == "AS" else parts[0]
            stages[current] = []
        elif current is not None:
            stages[current].append((ins["instruction"], ins["value"]))
    check(set(stages) == {"build", "worker"}, f"Dockerfile stages: {sorted(stages)}")
    froms = [i["value"] for i in df.structure if i["instruction"] == "FROM"]
    check(froms == ["${BUILD_BASE} AS build", "${RUN_BASE} AS worker"], f"FROM lines: {froms}")
    args = dict(a.split("=", 1) for a in re.findall(r"^ARG (\S+=\S+)", (ROOT / "Dockerfile").read_text(), re.M))
    features = set(re.findall(r"^(\w+) = \[", (ROOT / "worker/Cargo.toml").read_text().split("[features]")[1]
                              .split("[dependencies]")[0], re.M))
    check(args.get("FEATURES") in features, f"the default FEATURES ({args.get('FEATURES')}) is a worker feature")
    build_image = (ROOT / "scripts/build-image.sh").read_text()
    for feature in re.findall(r"FEATURES=(\w+)", build_image):
        check(feature in features, f"build-image.sh's FEATURES={feature} is a worker feature")
    check(args.get("BUILD_BASE", "").startswith("rust:") and args.get("RUN_BASE", "").startswith("debian:"),
          "the default image is the CPU one")
    ins = stages.get("worker", [])
    get = lambda k: [v for i, v in ins if i == k]
    users = get("USER")
    check(users and users[-1].split(":")[0] not in ("root", "0"), f"runs as a non-root USER ({users})")
    check(any("/healthz" in h for h in get("HEALTHCHECK")), "HEALTHCHECK on /healthz")
    check(get("EXPOSE") == ["8080"], "EXPOSE 8080")
    check(any(v.startswith("--from=build ") for v in get("COPY")), "the binary comes from the build stage")
    entry = yaml.safe_load(get("ENTRYPOINT")[-1]) if get("ENTRYPOINT") else []
    check(entry[:2] == ["/usr/local/bin/htc", "serve"], f"ENTRYPOINT runs htc serve ({entry})")
    for flag in [a for a in entry if a.startswith("--")]:
        check(flag in serve_flags, f"ENTRYPOINT flag {flag} is an htc serve flag")
    check("--api-only" in entry and "/models/model" in entry, "API only, model from /models/model")
    docker_uid = users[-1].split(":")[0] if users else None

    # --- Kubernetes ---------------------------------------------------------------------------
    docs = {}
    for f in sorted((ROOT / "deploy/k8s").glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            docs[(d["kind"], d["metadata"]["name"])] = d
    dep = docs[("Deployment", "htc-worker")]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    check(dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), "Deployment selector matches its pods")
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports.get("http") == 8080, "the container port is the image's 8080")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        g = c.get(probe, {}).get("httpGet", {})
        check(g.get("path") == "/healthz" and g.get("port") == "http", f"{probe} on /healthz")
    for flag in [a for a in c.get("args", []) if a.startswith("--")]:
        check(flag in serve_flags, f"Deployment arg {flag} is an htc serve flag")
    check(c["resources"]["limits"].get("nvidia.com/gpu") == "1", "one GPU per pod")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    check(mounts["models"]["mountPath"] == "/models" and mounts["models"].get("readOnly") is True,
          "the model volume is mounted read-only at /models")
    vols = {v["name"]: v for v in pod["volumes"]}
    check(vols["models"]["persistentVolumeClaim"].get("readOnly") is True, "the model claim is read-only")
    check(str(pod["securityContext"]["runAsUser"]) == docker_uid, "runAsUser is the image's user")
    check(pod["securityContext"].get("runAsNonRoot") is True, "runAsNonRoot")
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    check(pod["terminationGracePeriodSeconds"] >= pause + 60,
          "the grace period covers the preStop pause and a minute of draining")
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    check(ann.get("prometheus.io/port") == "8080" and ann.get("prometheus.io/path") == "/metrics",
          "scrape annotations point at /metrics on 8080")

    svc = docs[("Service", "htc-worker")]
    check(svc["spec"]["selector"].items() <= labels.items(), "the Service selects the worker pods")
    check(svc["spec"]["ports"][0]["targetPort"] == "http", "the Service targets the named port")
    ing = docs[("Ingress", "htc-worker")]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    check(backend == {"name": "htc-worker", "port": {"name": "http"}}, "the Ingress routes to the Service")
    check(ing["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/upstream-hash-by") == "$arg_session",
          "the Ingress hashes the session parameter (as the load client and the page set it)")

    hpa = docs[("HorizontalPodAutoscaler", "htc-worker")]
    check(hpa["spec"]["scaleTargetRef"]["name"] == "htc-worker", "the HPA scales the Deployment")
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    source = (ROOT / "worker/src/runtime/engine/metrics.rs").read_text()
    check(f'"{metric}"' in source, f"the HPA's metric {metric} is one the worker exports")
    adapter = yaml.safe_load(docs[("ConfigMap", "adapter-config")]["data"]["config.yaml"])
    check(any(metric in r["seriesQuery"] for r in adapter["rules"]), "the adapter serves the HPA's metric")
    pdb = docs[("PodDisruptionBudget", "htc-worker")]
    check(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the PDB covers the worker pods")

    # --- Prometheus ---------------------------------------------------------------------------
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    keep = [r for j in prom["scrape_configs"] for r in j.get("relabel_configs", []) if r.get("action") == "keep"]
    check(any(r["regex"] == ann.get("prometheus.io/scrape") for r in keep), "Prometheus keeps the annotated pods")

    for f in failures:
        print(f"FAILED: {f}")
    print(f"deploy checks: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
