# Shared by the Makefile, scripts/check_template.sh and scripts/check_deployment.sh (sourced, not
# run): `step` prints, runs and times one command; `ensure_venv` installs pinned requirements into
# a venv of their own when the pins changed, with uv (from requirements/uv.txt, bootstrapped into
# .venv-uv with pip once).
# Expects BASE_PYTHON (the interpreter that creates the venvs).

step() {  # step NAME CMD...: print, run and time one command
  local name="$1"; shift
  echo "==> ${name}: $*"
  local start=$SECONDS
  "$@"
  echo "<== ${name}: ok in $((SECONDS - start)) s"
}

UV_DIR=.venv-uv

ensure_uv() {  # .venv-uv/bin/uv, at the version requirements/uv.txt pins
  local want
  want="$(sha256sum requirements/uv.txt | cut -d' ' -f1)"
  if [[ -x "${UV_DIR}/bin/uv" && "$(cat "${UV_DIR}/.requirements.sha256" 2>/dev/null)" == "$want" ]]; then
    return
  fi
  [[ -x "${UV_DIR}/bin/python" ]] || "$BASE_PYTHON" -m venv "$UV_DIR"
  "${UV_DIR}/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements/uv.txt
  echo "$want" > "${UV_DIR}/.requirements.sha256"
}

pip_find_links() {  # the find-links of pip's configuration: where wheels on this disk are
  # (the CPU torch wheel here); uv does not read pip's configuration, so it is handed over.
  if [[ -n "${PIP_FIND_LINKS:-}" ]]; then echo "$PIP_FIND_LINKS"; return; fi
  "$BASE_PYTHON" -m pip config get global.find-links 2>/dev/null || true
}

uv_install() {  # uv_install VENV_DIR ARGS...: uv pip install ARGS into that venv
  local dir="$1"; shift
  local links=()
  local link
  for link in $(pip_find_links); do links+=(--find-links "$link"); done
  "${UV_DIR}/bin/uv" pip install --quiet --python "${dir}/bin/python" "${links[@]}" "$@"
}

ensure_venv() {  # ensure_venv DIR REQUIREMENTS...: (re)install only when the pins changed
  local dir="$1"; shift
  local stamp="${dir}/.requirements.sha256"
  local want
  want="$(cat "$@" | sha256sum | cut -d' ' -f1)"
  if [[ -x "${dir}/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "==> ${dir} is up to date with $*"
    return
  fi
  echo "==> installing $* into ${dir}"
  local start=$SECONDS
  ensure_uv
  [[ -x "${dir}/bin/python" ]] || "$BASE_PYTHON" -m venv --without-pip "$dir"
  local requirement args=()
  for requirement in "$@"; do args+=(-r "$requirement"); done
  uv_install "$dir" "${args[@]}"
  echo "$want" > "$stamp"
  echo "<== ${dir} installed in $((SECONDS - start)) s"
}
