#!/usr/bin/env bash
# Validates deploy/kubernetes/*.yaml against the Kubernetes API schemas (kubernetes-validate,
# strict: an unknown field is an error) for the oldest and newest versions we claim, then
# checks what schemas cannot: every $(VAR) in a container's env is defined above it, and the
# voters list names one pod per voter.
#
#   scripts/validate-k8s.sh
#
# The validator lives in a venv under ${CARGO_TARGET_DIR:-target}/k8s-validate/<hash of the
# pins>, built on first use from deploy/kubernetes/validate-requirements.txt (needs PyPI
# once; validation itself is offline). RUNNEL_K8S_VERSIONS overrides the versions checked.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
req=$repo/deploy/kubernetes/validate-requirements.txt
python=${RUNNEL_PYTHON:-python3}
versions=${RUNNEL_K8S_VERSIONS:-1.29.0 1.37.0}

die() { echo "validate-k8s: $*" >&2; exit 1; }
key=$({ cat "$req"; "$python" --version; } | sha256sum | cut -c1-16)
venv=${CARGO_TARGET_DIR:-$repo/target}/k8s-validate/$key
if [[ ! -f $venv/.ready ]]; then
  rm -rf "$venv"
  "$python" -m venv "$venv" >&2 || die "'$python -m venv' failed (apt-get install python3-venv)"
  timeout 300 "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
    --timeout 30 -r "$req" >&2 || die "pip install -r $req failed"
  touch "$venv/.ready"
fi

manifests=()
for f in "$repo"/deploy/kubernetes/*.yaml; do
  [[ $(basename "$f") == kustomization.yaml ]] && continue  # kustomize's, not an API object
  manifests+=("$f")
done
for v in $versions; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${manifests[@]}" \
    || die "the manifests do not validate against Kubernetes $v"
  echo "validate-k8s: ${#manifests[@]} files valid against Kubernetes $v (strict)"
done

"$venv/bin/python" - "${manifests[@]}" <<'PY'
import re, sys, yaml
problems = []
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") != "StatefulSet":
            continue
        pod = doc["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            seen = set()
            for e in c.get("env", []):
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
                    if ref not in seen:
                        problems.append(f"{path}: {c['name']}: {e['name']} uses $({ref}) before it is defined")
                seen.add(e["name"])
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        voters = env["RUNNEL_CONTROLLER_VOTERS"].split(",")
        name, svc = doc["metadata"]["name"], doc["spec"]["serviceName"]
        for i, v in enumerate(voters):
            want = f"{i + 1}@{name}-{i}.{svc}."
            if not v.startswith(want):
                problems.append(f"{path}: voter {v!r} should start with {want!r} (id = ordinal + 1)")
        init_voters = {e["name"]: e.get("value") for e in pod["initContainers"][0]["env"]}.get("VOTERS")
        if init_voters != str(len(voters)):
            problems.append(f"{path}: the init step's VOTERS={init_voters} but {len(voters)} voters are listed")
        if doc["spec"]["replicas"] < len(voters):
            problems.append(f"{path}: fewer replicas than voters")
for p in problems:
    print("validate-k8s:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
echo "validate-k8s: env references and the voters list are consistent"
