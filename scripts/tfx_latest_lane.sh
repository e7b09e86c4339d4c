#!/usr/bin/env bash
# The opportunistic third lane: the TFX pipeline (e2e) tests on the newest TFX that
# installs here (1.17-1.21: TF 2.17-2.21). Those TFX releases need ml-metadata and
# TFDV wheels built for glibc >= 2.38 (Debian 13); on older machines (Debian 12,
# glibc 2.36) this lane cannot exist, and it says so and succeeds.
#
# On a machine where it can run, it creates .venv-tfx-latest (Python 3.11: TFX 1.21's
# `kfp` extra installs kfp only below Python 3.12) with the newest TFX our setup.py
# admits, and runs the e2e tests there. No lock file: it cannot be resolved on the
# machines that make the others, so this lane takes what pip resolves that day.
set -uo pipefail
cd "$(dirname "$0")/.."

glibc=$(python3 -c 'import os; print(os.confstr("CS_GNU_LIBC_VERSION").split()[1])' 2>/dev/null || echo 0)
if ! python3 -c "import sys; v=tuple(map(int, '$glibc'.split('.'))); sys.exit(0 if v >= (2, 38) else 1)" 2>/dev/null; then
  echo "tfx-latest lane: skipped: TFX >= 1.17 needs ml-metadata/TFDV wheels for glibc >= 2.38; this machine has glibc $glibc ($(cat /etc/debian_version 2>/dev/null | sed 's/^/Debian /'))"
  exit 0
fi

VENV=.venv-tfx-latest
PY=$(ls "$HOME"/.pyenv/versions/3.11.*/bin/python3.11 2>/dev/null | tail -1)
PY=${PY:-$(command -v python3.11)}
[ -n "$PY" ] || { echo "tfx-latest lane: Python 3.11 not found" >&2; exit 1; }
if [ ! -f "$VENV/.setup-stamp" ] || [ "$(cat "$VENV/.setup-stamp")" != "$(sha256sum setup.py | cut -d' ' -f1)" ]; then
  rm -rf "$VENV" && "$PY" -m venv "$VENV" || exit 1
  "$VENV/bin/python" -m pip install --quiet -e '.[tfx,test]' 'tfx[kfp]>=1.17,<1.22' || exit 1
  sha256sum setup.py | cut -d' ' -f1 > "$VENV/.setup-stamp"
fi
echo "tfx-latest lane: $("$VENV/bin/python" -c 'import tfx.version, tensorflow as tf; print("TFX", tfx.version.__version__, "TF", tf.__version__)' 2>/dev/null)"
exec "$VENV/bin/python" -m pytest -m e2e -q
