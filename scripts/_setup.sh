# Shared by scripts/dev and scripts/test: system packages (as root, via apt) and the venv.
# Usage: source scripts/_setup.sh; setup_system PKG...; setup_venv [EXTRAS]
set -euo pipefail

setup_system() {
  local need=()
  for pair in "$@"; do
    local cmd=${pair%%:*} pkg=${pair#*:}
    command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
  done
  ((${#need[@]})) || return 0
  if [ "$(id -u)" != 0 ]; then
    echo "Please install: ${need[*]} (e.g. sudo apt-get install -y ${need[*]})" >&2
    return 1
  fi
  echo "==> apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
}

setup_venv() {
  local extras=${1:-}
  if [ ! -x .venv/bin/python ]; then
    echo "==> creating .venv"
    python3 -m venv .venv
  fi
  local stamp=.venv/.installed${extras:+-$extras}
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "==> installing taskorch${extras:+[$extras]} into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
    touch "$stamp"
  fi
}
