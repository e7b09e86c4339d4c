#!/usr/bin/env bash
# Creates a lane's virtualenv and installs this package into it, editable.
#
#   scripts/setup.sh            the pinned TFX lane: .venv, Python 3.10, TFX 1.16,
#                               TF 2.16 (constraints.txt), extras tfx,test,test-tfx
#   scripts/setup.sh current    the current lane: .venv-current, Python 3.12, TF 2.21,
#                               Keras 3.15, tf_keras 2.21, TFT/tfx-bsl 1.21, kfp 2.17
#                               (constraints-current.txt), extras serving,transform,kfp,test;
#                               no TFX (TFX 1.17+ has no ml-metadata/TFDV wheel for
#                               glibc < 2.38)
#
# Idempotent and quick when nothing changed: the install is skipped while the stamp
# <venv>/.setup-stamp (a hash of setup.py, the lane's constraints, the install spec and
# the venv's Python version) matches, so `make run` / `make test` do not re-resolve
# ~250 packages every time. Delete the stamp (or the venv) to force a reinstall.
set -euo pipefail
cd "$(dirname "$0")/.."

LANE=${1:-pinned}
case "$LANE" in
  pinned)
    VENV=.venv; CONSTRAINTS=constraints.txt; PY_MINOR=3.10
    INSTALL_SPEC=(-e ".[tfx,test,test-tfx]")
    # What must import for the lane to be usable (find_spec: nothing is executed).
    MODULES='"export_archive", "tfx", "tensorflow", "tensorflow_serving"'
    IMPORT_CHECK='import export_archive, tfx, tensorflow_serving.apis' ;;
  current)
    VENV=.venv-current; CONSTRAINTS=constraints-current.txt; PY_MINOR=3.12
    INSTALL_SPEC=(-e ".[serving,transform,kfp,test]")
    MODULES='"export_archive", "tensorflow", "tensorflow_transform", "kfp", "tensorflow_serving"'
    IMPORT_CHECK='import export_archive, tensorflow_transform, kfp, tensorflow_serving.apis' ;;
  *)
    echo "setup: unknown lane '$LANE'. allowed: pinned, current" >&2; exit 2 ;;
esac
STAMP=$VENV/.setup-stamp
VPY=$VENV/bin/python

find_python() {
  local c
  for c in "${PYTHON_FOR_LANE:-}" "$([ "$LANE" = pinned ] && echo "${PYTHON310:-}")" "python$PY_MINOR" "$HOME"/.pyenv/versions/"$PY_MINOR".*/bin/python"$PY_MINOR" \
           /usr/local/bin/python"$PY_MINOR" /usr/bin/python"$PY_MINOR"; do
    [ -n "$c" ] || continue
    if "$c" -c "import sys; assert '%d.%d' % sys.version_info[:2] == '$PY_MINOR'" >/dev/null 2>&1; then
      command -v "$c" 2>/dev/null || echo "$c"; return 0
    fi
  done
  return 1
}

# What the installed environment depends on. The venv's own Python version is part of
# it: a venv whose base interpreter was upgraded or replaced must be reinstalled.
stamp_value() {
  local version
  version=$("$VPY" -c 'import sys; print(sys.version)' 2>/dev/null) || return 1
  { cat setup.py "$CONSTRAINTS"; echo "${INSTALL_SPEC[*]}"; echo "$version"; } \
    | "$VPY" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())'
}

# Fast path: stamp matches and the top-level packages are still there. find_spec does
# not execute them (importing tensorflow_serving.apis alone loads TensorFlow, ~10 s).
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$(stamp_value || true)" ] \
   && "$VPY" -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ($MODULES)))" \
      >/dev/null 2>&1; then
  echo "setup: $VENV up to date ($("$VPY" --version); $STAMP matches setup.py and $CONSTRAINTS)"
  exit 0
fi

PY=$(find_python) || {
  echo "setup: Python $PY_MINOR not found (the $LANE lane needs it). Install it (e.g. pyenv install $PY_MINOR), or set PYTHON_FOR_LANE=/path/to/python$PY_MINOR." >&2
  exit 1
}

# uv resolves and installs the ~250 pinned packages in seconds; pip is the fallback.
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet uv >/dev/null 2>&1 || "$PY" -m pip install --quiet uv >/dev/null 2>&1 || true
fi
# --seed / venv put pip in the venv: TFX packages a module_file with `python -m pip`.
[ -x "$VPY" ] || { command -v uv >/dev/null 2>&1 \
  && UV_PYTHON_DOWNLOADS=never uv venv --quiet --seed -p "$PY" "$VENV"; } \
  || "$PY" -m venv "$VENV"
# An install that fails half-way must not leave an old stamp that says "up to date".
rm -f "$STAMP"
if ! { command -v uv >/dev/null 2>&1 && UV_PYTHON_DOWNLOADS=never uv pip install --quiet \
         -p "$VPY" -c "$CONSTRAINTS" "${INSTALL_SPEC[@]}"; }; then
  # pip reads the machine's pip configuration (indexes, certificates) that uv ignores.
  echo "setup: installing with pip" >&2
  "$VPY" -m pip install --quiet -c "$CONSTRAINTS" "${INSTALL_SPEC[@]}"
fi
"$VPY" -c "$IMPORT_CHECK" >/dev/null 2>&1 \
  || { echo "setup: the $LANE lane's environment does not import; see the output above" >&2; exit 1; }
# Written last and atomically: only a complete, importable install is stamped.
stamp_value > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
echo "setup: $VENV ready ($("$VPY" --version))"
