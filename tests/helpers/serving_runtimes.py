"""Real older TensorFlow processes to serve exports in: side virtualenvs, made once.

Vertex AI's newest prebuilt TF prediction images are TF 2.15 and 2.14, while the
lanes export with TF 2.16 and 2.21. `ensure(version)` returns the Python of a
virtualenv under `.cache/runtimes/tf-X.Y` with `tensorflow-cpu==X.Y.*`, numpy<2 and
the TF Serving API protos of the same version (for the warmup file), created with
`python -m venv` and pip from pyenv's Python 3.11 (TF 2.14/2.15 have no 3.12
wheels; pip reads this machine's package-index configuration, uv does not). A
stamp file records what was installed: a second run finds it and installs
nothing. A runtime that cannot be made fails the test with the reason (never a
skip: a silent skip would pass a check nobody ran).

`serve(version, jobs)` runs `runtime_runner.py` in that runtime, once for all jobs.
"""

from __future__ import annotations

import base64
import fcntl
import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any, Dict, List

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("EXPORT_ARCHIVE_RUNTIMES_DIR",
                       os.path.join(REPO, ".cache", "runtimes"))
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime_runner.py")
STAMP = ".export-archive-runtime.json"
# What each runtime holds. The TF Serving API protos come without their
# dependencies: the runner needs only prediction_log_pb2 (no grpc).
def requirements(version: str) -> Dict[str, List[str]]:
    return {"deps": [f"tensorflow-cpu=={version}.*", "numpy<2"],
            "no_deps": [f"tensorflow-serving-api=={version}.*"]}


# How long the last `ensure` took per version, and whether it installed (for reports).
TIMINGS: Dict[str, Dict[str, Any]] = {}


def base_python() -> str:
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    if shutil.which("pyenv"):
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                              check=False).stdout.strip() or root
    found = sorted(glob.glob(os.path.join(root, "versions", "3.11.*", "bin", "python")))
    if not found:
        pytest.fail(f"no Python 3.11 under {root}/versions: the TF 2.14/2.15 runtimes need "
                    "one (they publish no Python 3.12 wheels); install it with "
                    "`pyenv install 3.11`", pytrace=False)
    return found[-1]


def ensure(version: str) -> str:
    """The python of the TF `version` runtime, made if its stamp is missing or stale."""
    venv = os.path.join(CACHE, f"tf-{version}")
    python = os.path.join(venv, "bin", "python")
    wanted = requirements(version)
    os.makedirs(CACHE, exist_ok=True)
    start = time.monotonic()
    # One maker at a time (two test processes, two lanes): the other waits, then finds
    # the stamp.
    with open(os.path.join(CACHE, f".tf-{version}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = _read_stamp(venv)
        if stamp is not None and stamp.get("requirements") == wanted \
                and os.path.exists(python):
            TIMINGS[version] = {"installed": False, "seconds": time.monotonic() - start}
            return python
        shutil.rmtree(venv, ignore_errors=True)
        log = []
        steps = [[base_python(), "-m", "venv", venv],
                 [python, "-m", "pip", "install", "-q", *wanted["deps"]],
                 [python, "-m", "pip", "install", "-q", "--no-deps", *wanted["no_deps"]]]
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, check=False)
            log.append(done.stderr)
            if done.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                pytest.fail(f"could not create the TF {version} runtime at {venv}: "
                            f"`{' '.join(step)}` exited {done.returncode}:\n"
                            + _tail("".join(log)), pytrace=False)
        reported = subprocess.run(
            [python, "-c", "import sys; sys.modules['keras'] = None; import tensorflow as tf; "
                           "print(tf.__version__)"],
            capture_output=True, text=True, check=False,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        tf_version = reported.stdout.strip().splitlines()[-1] if reported.stdout.strip() else ""
        if reported.returncode != 0 or not tf_version.startswith(version + "."):
            pytest.fail(f"the TF {version} runtime at {venv} does not import TF {version} "
                        f"(got {tf_version!r}):\n{_tail(reported.stderr)}", pytrace=False)
        with open(os.path.join(venv, STAMP), "w") as f:
            json.dump({"requirements": wanted, "tensorflow": tf_version,
                       "python": base_python()}, f)
        TIMINGS[version] = {"installed": True, "seconds": time.monotonic() - start}
    return python


def _read_stamp(venv: str):
    try:
        with open(os.path.join(venv, STAMP)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _tail(text: str, lines: int = 15) -> str:
    kept = [line for line in text.splitlines() if "is ignored: it is neither" not in line]
    return "\n".join(kept[-lines:])


def tensor_to_text(value) -> str:
    import tensorflow as tf
    return base64.b64encode(tf.make_tensor_proto(value).SerializeToString()).decode()


def tensor_from_text(text: str):
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2
    proto = tensor_pb2.TensorProto()
    proto.ParseFromString(base64.b64decode(text))
    return tf.make_ndarray(proto)


def serve(version: str, jobs: List[Dict[str, Any]], timeout: int = 600) -> Dict[str, Any]:
    """Runs `jobs` ({"id", "export_dir", "calls": {signature: {key: array}}}) in the
    TF `version` runtime. Returns {"tensorflow", "jobs": {id: {...}}, "stderr"}: per
    job its `load` ("ok" or the error), `warmup` (requests replayed, or the error)
    and `outputs` {signature: {key: array}} (or `error`)."""
    python = ensure(version)
    with tempfile.TemporaryDirectory(prefix=f"runtime-{version}-") as scratch:
        path = os.path.join(scratch, "jobs.json")
        with open(path, "w") as f:
            json.dump([{"id": j["id"], "export_dir": j["export_dir"],
                        "calls": {sig: {k: tensor_to_text(v) for k, v in inputs.items()}
                                  for sig, inputs in j["calls"].items()}} for j in jobs], f)
        out = os.path.join(scratch, "result.json")
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS", "PYTHONHOME")}
        env["TF_CPP_MIN_LOG_LEVEL"] = "0"   # the runtime's own load warnings are evidence
        done = subprocess.run([python, RUNNER, path, out], capture_output=True, text=True,
                              timeout=timeout, env=env, check=False)
        if done.returncode != 0 or not os.path.exists(out):
            pytest.fail(f"the TF {version} runner exited {done.returncode}:\n"
                        + _tail(done.stderr, 30), pytrace=False)
        with open(out) as f:
            result = json.load(f)
    for job in result["jobs"].values():
        job["outputs"] = {sig: {k: tensor_from_text(v) for k, v in outputs.items()}
                          for sig, outputs in job.get("outputs", {}).items()}
    result["stderr"] = done.stderr
    return result
