# Shared by scripts/check_template.sh and scripts/check_deployment.sh (sourced, not run):
# `step` prints, runs and times one command; `ensure_venv` installs a tool's pinned requirements
# into its own venv when the pins changed, printing one line per package as pip gets to it.
# Expects BASE_PYTHON (the interpreter that creates the venvs).

step() {  # step NAME CMD...: print, run and time one command
  local name="$1"; shift
  echo "==> ${name}: $*"
  local start=$SECONDS
  "$@"
  echo "<== ${name}: ok in $((SECONDS - start)) s"
}

ensure_venv() {  # ensure_venv DIR REQUIREMENTS: (re)install only when the pins changed
  local dir="$1" requirements="$2"
  local stamp="${dir}/.requirements.sha256" log="${dir}/pip-install.log"
  local want
  want="$(sha256sum "$requirements" | cut -d' ' -f1)"
  if [[ -x "${dir}/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "==> ${dir} is up to date with ${requirements}"
    return
  fi
  echo "==> installing ${requirements} into ${dir} (full log: ${log})"
  local start=$SECONDS
  [[ -x "${dir}/bin/python" ]] || "$BASE_PYTHON" -m venv "$dir"
  # One line per package as pip gets to it, so a slow install shows where it is.
  if ! "${dir}/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
      -r "$requirements" 2>&1 | tee "$log" \
      | { grep --line-buffered -E '^(Collecting|Successfully installed)' || true; } \
      | sed -u -e 's/^/    /'; then
    cat "$log"
    exit 1
  fi
  echo "$want" > "$stamp"
  echo "<== ${dir} installed in $((SECONDS - start)) s"
}
