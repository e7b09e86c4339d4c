#!/usr/bin/env bash
# Creates .venv with the tested stack (Python 3.10, TFX 1.16; pinned in constraints.txt)
# and installs this package into it, editable, with the tfx and test extras.
# Idempotent: a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python310() {
  local c
  for c in "${PYTHON310:-}" python3.10 "$HOME"/.pyenv/versions/3.10*/bin/python3.10 \
           /usr/local/bin/python3.10 /usr/bin/python3.10; do
    [ -n "$c" ] || continue
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1; then
      command -v "$c" 2>/dev/null || echo "$c"; return 0
    fi
  done
  return 1
}

PY=$(find_python310) || {
  echo "setup: Python 3.10 not found (TFX 1.16 needs it). Install it, or set PYTHON310=/path/to/python3.10." >&2
  exit 1
}

# uv resolves and installs the ~250 pinned packages in seconds; pip is the fallback.
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet uv >/dev/null 2>&1 || "$PY" -m pip install --quiet uv >/dev/null 2>&1 || true
fi
# --seed / venv put pip in the venv: TFX packages a module_file with `python -m pip`.
[ -x .venv/bin/python ] || { command -v uv >/dev/null 2>&1 \
  && UV_PYTHON_DOWNLOADS=never uv venv --quiet --seed -p "$PY" .venv; } \
  || "$PY" -m venv .venv
if ! { command -v uv >/dev/null 2>&1 && UV_PYTHON_DOWNLOADS=never uv pip install --quiet \
         -p .venv/bin/python -c constraints.txt -e ".[tfx,test]"; }; then
  # pip reads the machine's pip configuration (indexes, certificates) that uv ignores.
  echo "setup: installing with pip" >&2
  .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[tfx,test]"
fi
.venv/bin/python -c 'import export_archive, tfx, tensorflow_serving.apis' >/dev/null 2>&1 \
  || { echo "setup: the environment does not import; see the output above" >&2; exit 1; }
echo "setup: .venv ready ($(.venv/bin/python --version))"
