#!/usr/bin/env bash
# Offline checks of the deployment files (Dockerfile, deploy/k8s, deploy/prometheus):
#   1. deploy/check.py: consistent with each other and with the worker (flags `htc serve`
#      really has, the metric the autoscaler reads, ports, users, read-only model volume);
#   2. the Kubernetes manifests against the API's JSON schemas (kubernetes-validate, strict:
#      unknown fields are errors);
#   3. the Prometheus scrape config with promtool. Debian's promtool is built without Kubernetes
#      service discovery, so it checks a copy whose kubernetes_sd_configs are replaced by a
#      static target (everything else, the relabelling rules included, as written).
# Installs its Python tools into .cache/deploy-venv (PyPI) and promtool (Debian's prometheus).
# No container runtime runs on this machine, so the images themselves are not built here.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$HTC_ROOT"
venv="$HTC_ROOT/.cache/deploy-venv"
if ! "$venv/bin/python" -c "import kubernetes_validate, dockerfile_parse, yaml" 2>/dev/null; then
  log "python tools for the deploy checks (.cache/deploy-venv)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet kubernetes-validate==1.37.0 dockerfile-parse==2.0.1 PyYAML==6.0.2
fi
command -v promtool >/dev/null || { log "promtool is missing: run scripts/setup.sh"; exit 1; }
if [ -n "${HTC_BIN:-}" ]; then
  htc=$HTC_BIN
else
  cargo build --quiet -p htc-worker --bin htc
  htc="$CARGO_TARGET_DIR/debug/htc"
fi
"$venv/bin/python" deploy/check.py "$htc"
"$venv/bin/kubernetes-validate" --strict --kubernetes-version 1.37.0 deploy/k8s/*.yaml
promcopy=$(mktemp --suffix .yml)
trap 'rm -f "$promcopy" "$promcopy.token"' EXIT
"$venv/bin/python" - deploy/prometheus/prometheus.yml "$promcopy" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
for job in cfg["scrape_configs"]:
    if job.pop("kubernetes_sd_configs", None) is not None:
        job["static_configs"] = [{"targets": ["pod.example:8080"]}]
    # The token file is mounted in a real deployment; promtool wants it to exist.
    auth = job.get("authorization", {})
    if "credentials_file" in auth:
        open(sys.argv[2] + ".token", "w").write("token\n")
        auth["credentials_file"] = sys.argv[2] + ".token"
yaml.safe_dump(cfg, open(sys.argv[2], "w"))
PY
promtool check config "$promcopy"
log "deploy checks passed"
