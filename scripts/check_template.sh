#!/usr/bin/env bash
# Checks of the SAM application: cfn-lint, `sam validate --lint`, checkov and `sam build` for
# Lambda's platform (python3.13, arm64). checkov runs once here for everything it checks: the
# templates (CloudFormation) and the GPU service's Dockerfile and Kubernetes manifests.
# Run from anywhere; exits non-zero on the first failure.
# The tools live in their own venvs (.venv-sam, .venv-checkov), created or updated here from the
# pinned requirements/sam.txt and requirements/checkov.txt: their dependencies conflict.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

export SAM_CLI_TELEMETRY=0
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
BASE_PYTHON="${BASE_PYTHON:-python3}"

# shellcheck source=scripts/tool_venv.sh
source "${REPO_ROOT}/scripts/tool_venv.sh"

find_python313() {  # sam build's python3.13 workflow needs that interpreter on PATH
  # A pyenv shim is on PATH even where 3.13 is not the selected version: check that it runs.
  if python3.13 -c 'import sys' > /dev/null 2>&1; then return; fi
  local root
  root="$(pyenv root 2>/dev/null || echo "${HOME}/.pyenv")"
  local candidate
  for candidate in "${root}"/versions/3.13*/bin; do
    if [[ -x "${candidate}/python3.13" ]]; then
      export PATH="${candidate}:${PATH}"
      echo "==> python3.13 for sam build: ${candidate}/python3.13"
      return
    fi
  done
  echo "python3.13 not found: install it (e.g. pyenv install 3.13) for sam build" >&2
  exit 1
}

assert_layer_platform() {  # the layer must hold Lambda's wheels, not this machine's
  local layer_dir=".aws-sam/build/CommonLayer/python"
  local so
  so="$(find "$layer_dir" -path '*pydantic_core/_pydantic_core*.so' | head -n 1)"
  if [[ -z "$so" ]]; then
    echo "no pydantic_core extension in ${layer_dir}" >&2
    return 1
  fi
  echo "    ${so#"$REPO_ROOT"/}"
  if [[ "$so" != *cpython-313-aarch64-linux-gnu.so ]]; then
    echo "pydantic_core is not built for cp313/aarch64: ${so}" >&2
    return 1
  fi
  if command -v file > /dev/null && ! file "$so" | grep -q "ARM aarch64"; then
    echo "pydantic_core's extension is not an aarch64 ELF: $(file "$so")" >&2
    return 1
  fi
}

total_start=$SECONDS
ensure_venv .venv-sam requirements/sam.txt
ensure_venv .venv-checkov requirements/checkov.txt

# The main template and its nested applications (the optional ECS GPU worker, the schema registry).
step "cfn-lint" .venv-sam/bin/cfn-lint template.yaml gpu_service/ecs/template.yaml \
  events/schemas/registry.yaml
step "sam validate --lint" .venv-sam/bin/sam validate --lint --template-file template.yaml
# Files, not folders: checkov drops every -f once a -d is given.
checkov_files=(template.yaml gpu_service/ecs/template.yaml gpu_service/Dockerfile gpu_service/k8s/*.yaml)
step "checkov" .venv-checkov/bin/checkov "${checkov_files[@]/#/--file=}" \
  --framework cloudformation dockerfile kubernetes \
  --config-file .checkov.yaml \
  --skip-download --compact --quiet

find_python313
step "sam build" .venv-sam/bin/sam build --template-file template.yaml --parallel --cached
step "layer platform" assert_layer_platform

echo "all template checks passed in $((SECONDS - total_start)) s"
