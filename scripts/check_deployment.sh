#!/usr/bin/env bash
# Checks of the GPU service's deployment artefacts, as scripts/check_template.sh checks the SAM
# application: hadolint on gpu_service/Dockerfile; the manifests in gpu_service/k8s against
# Kubernetes' schemas (kubernetes-validate --strict) and KEDA's objects against KEDA's CRDs
# (scripts/validate_keda_manifests.py). checkov's dockerfile and kubernetes frameworks check both
# in scripts/check_template.sh, in its one checkov run.
# A check is skipped only where it applies, with its reason: `# hadolint ignore=` above the
# instruction, `checkov.io/skipN` annotations on the manifest.
# The tools live in their own venv (.venv-deploy, from requirements/deployment.txt), created or
# updated here when the pins change.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

BASE_PYTHON="${BASE_PYTHON:-python3}"
K8S_DIR=gpu_service/k8s
# Read by kustomize, not by the API server: no schema; test_gpu_deployment.py checks its list.
KUSTOMIZATION="${K8S_DIR}/kustomization.yaml"
# KEDA's kinds: not in Kubernetes' schemas; validated against KEDA's CRDs instead.
KEDA_MANIFESTS=("${K8S_DIR}/worker-scaledobject.yaml")

# shellcheck source=scripts/tool_venv.sh
source "${REPO_ROOT}/scripts/tool_venv.sh"

validate_kubernetes_manifests() {  # every manifest but the two kinds above, strictly
  local manifests=() path output
  for path in "${K8S_DIR}"/*.yaml; do
    [[ "$path" == "$KUSTOMIZATION" || " ${KEDA_MANIFESTS[*]} " == *" ${path} "* ]] && continue
    manifests+=("$path")
  done
  output="$(.venv-deploy/bin/kubernetes-validate --strict "${manifests[@]}")" || {
    echo "$output"
    return 1
  }
  echo "$output"
  # kubernetes-validate passes a kind it has no schema for with a warning: here that fails, so
  # a new kind is either Kubernetes' own or named above.
  if grep -q '^WARN' <<< "$output"; then
    echo "a manifest has a kind without a Kubernetes schema: validate it or name it above" >&2
    return 1
  fi
}

total_start=$SECONDS
ensure_venv .venv-deploy requirements/deployment.txt

step "hadolint" .venv-deploy/bin/hadolint --no-color gpu_service/Dockerfile
step "kubernetes-validate" validate_kubernetes_manifests
step "KEDA manifests" .venv-deploy/bin/python scripts/validate_keda_manifests.py \
  "${KEDA_MANIFESTS[@]}"

echo "all deployment checks passed in $((SECONDS - total_start)) s"
