#!/usr/bin/env bash
# Creates .venv with the tested stack (Python 3.10, TFX 1.16; pinned in constraints.txt)
# and installs this package into it, editable, with the tfx and test extras.
# Idempotent and quick when nothing changed: the install is skipped while the stamp
# .venv/.setup-stamp (a hash of setup.py, constraints.txt, the install spec and the
# venv's Python version) matches, so `make run` / `make test` do not re-resolve ~250
# packages every time. Delete the stamp (or .venv) to force a reinstall.
set -euo pipefail
cd "$(dirname "$0")/.."

INSTALL_SPEC=(-e ".[tfx,test]")
STAMP=.venv/.setup-stamp

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

# What the installed environment depends on. The venv's own Python version is part of
# it: a venv whose base interpreter was upgraded or replaced must be reinstalled.
stamp_value() {
  local version
  version=$(.venv/bin/python -c 'import sys; print(sys.version)' 2>/dev/null) || return 1
  { cat setup.py constraints.txt; echo "${INSTALL_SPEC[*]}"; echo "$version"; } \
    | .venv/bin/python -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

# Fast path: stamp matches and the top-level packages are still there. find_spec does
# not execute them (importing tensorflow_serving.apis alone loads TensorFlow, ~10 s).
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_value || true)" ] \
   && .venv/bin/python -c 'import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ("export_archive", "tfx", "tensorflow", "tensorflow_serving")))' \
      >/dev/null 2>&1; then
  echo "setup: .venv up to date ($(.venv/bin/python --version); $STAMP matches setup.py and constraints.txt)"
  exit 0
fi

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
# An install that fails half-way must not leave an old stamp that says "up to date".
rm -f "$STAMP"
if ! { command -v uv >/dev/null 2>&1 && UV_PYTHON_DOWNLOADS=never uv pip install --quiet \
         -p .venv/bin/python -c constraints.txt "${INSTALL_SPEC[@]}"; }; then
  # pip reads the machine's pip configuration (indexes, certificates) that uv ignores.
  echo "setup: installing with pip" >&2
  .venv/bin/python -m pip install --quiet -c constraints.txt "${INSTALL_SPEC[@]}"
fi
.venv/bin/python -c 'import export_archive, tfx, tensorflow_serving.apis' >/dev/null 2>&1 \
  || { echo "setup: the environment does not import; see the output above" >&2; exit 1; }
# Written last and atomically: only a complete, importable install is stamped.
stamp_value > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
echo "setup: .venv ready ($(.venv/bin/python --version))"
