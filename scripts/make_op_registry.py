#!/usr/bin/env python3
"""Writes src/export_archive/op_registries/tf-MAJOR.MINOR.json from a real TF wheel.

The serving check's `serving_runtime` (src/export_archive/runtimes.py) compares an
export's ops and attrs with the ops the runtime's TensorFlow registers. Those op
lists are data files generated here, never typed by hand:

    python scripts/make_op_registry.py 2.14 2.15 2.16 2.21
        # for each version: a throwaway venv under /tmp (uv venv + uv pip install,
        # pip when uv is missing or fails), `tensorflow-cpu==2.X.*` installed into it,
        # every op registered by `import tensorflow` dumped, the venv removed
    python scripts/make_op_registry.py --python /path/to/venv/bin/python
        # dumps the TF already installed for that interpreter (e.g. a side runtime
        # under .cache/runtimes/), named by the version it reports

A file is {"tensorflow": "2.15.1", "generated_by": ..., "ops": {op: {attr: default}}}:
every op of `TF_GetAllOpList()` (the C API's registry, which TF Serving's loader
consults too), each attr with its default as a one-line text-format AttrValue, or
null when the op def declares no default. Keras is blocked while dumping, as in the
serving-contract process (it registers no ops, and its import is slow).
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, os.pardir, "src", "export_archive", "op_registries")

# Runs inside the interpreter that has the TF to dump; prints the registry JSON.
DUMP = r"""
import json, sys
for name in ("keras", "tf_keras"):
    sys.modules[name] = None
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.framework import op_def_pb2
from tensorflow.python.client import pywrap_tf_session
buf = pywrap_tf_session.TF_GetAllOpList()
ops = op_def_pb2.OpList()
ops.ParseFromString(buf if isinstance(buf, bytes) else pywrap_tf_session.TF_GetBuffer(buf))
registry = {}
for op in ops.op:
    registry[op.name] = {
        a.name: (text_format.MessageToString(a.default_value, as_one_line=True)
                 if a.HasField("default_value") else None)
        for a in op.attr}
json.dump({"tensorflow": tf.__version__, "ops": dict(sorted(registry.items()))},
          sys.stdout, sort_keys=True)
"""


def pyenv_python(minor: str = "3.11") -> str:
    """A pyenv interpreter: TF 2.14/2.15 publish no Python 3.12 wheel, so 3.11."""
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("pyenv") else os.path.expanduser("~/.pyenv")
    found = sorted(glob.glob(os.path.join(root, "versions", f"{minor}.*", "bin", "python")))
    if not found:
        sys.exit(f"make_op_registry: no Python {minor} under {root}/versions; install one "
                 "with `pyenv install {minor}` or pass --python")
    return found[-1]


def install(version: str, base_python: str, venv: str) -> str:
    """tensorflow-cpu==VERSION.* in a new venv; returns its python."""
    requirement = f"tensorflow-cpu=={version}.*"
    python = os.path.join(venv, "bin", "python")
    if shutil.which("uv"):
        made = subprocess.run(["uv", "venv", "-q", "-p", base_python, venv]).returncode == 0
        if made and subprocess.run(["uv", "pip", "install", "-q", "-p", python,
                                    requirement, "numpy<2"]).returncode == 0:
            return python
        print(f"make_op_registry: uv failed for {requirement}; trying pip", file=sys.stderr)
        shutil.rmtree(venv, ignore_errors=True)
    # pip reads the machine's index configuration, which uv ignores.
    subprocess.run([base_python, "-m", "venv", venv], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", requirement, "numpy<2"], check=True)
    return python


def dump(python: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_USE_LEGACY_KERAS", None)
    out = subprocess.run([python, "-c", DUMP], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"make_op_registry: dumping the ops with {python} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


def write(registry: dict, source: str) -> str:
    major_minor = ".".join(registry["tensorflow"].split(".")[:2])
    path = os.path.normpath(os.path.join(OUT_DIR, f"tf-{major_minor}.json"))
    os.makedirs(OUT_DIR, exist_ok=True)
    registry = {"tensorflow": registry["tensorflow"],
                "generated_by": f"scripts/make_op_registry.py ({source})",
                "ops": registry["ops"]}
    with open(path + ".part", "w") as f:
        # One op per line: a regenerated file diffs op by op.
        f.write("{\n")
        f.write(f'"tensorflow": {json.dumps(registry["tensorflow"])},\n')
        f.write(f'"generated_by": {json.dumps(registry["generated_by"])},\n')
        f.write('"ops": {\n')
        items = list(registry["ops"].items())
        for i, (name, attrs) in enumerate(items):
            f.write(f"{json.dumps(name)}: {json.dumps(attrs, sort_keys=True)}"
                    + (",\n" if i < len(items) - 1 else "\n"))
        f.write("}\n}\n")
    os.replace(path + ".part", path)
    print(f"{path}: TF {registry['tensorflow']}, {len(items)} ops")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*", help="MAJOR.MINOR, e.g. 2.15")
    parser.add_argument("--python", action="append", default=[],
                        help="dump the TF of this interpreter instead of installing one")
    parser.add_argument("--base-python", help="the Python for the throwaway venvs "
                        "(default: pyenv's newest 3.11)")
    args = parser.parse_args(argv)
    if not args.versions and not args.python:
        parser.error("give TF versions to install, or --python")
    for python in args.python:
        write(dump(python), f"the TF of {python}")
    base = args.base_python or (pyenv_python() if args.versions else None)
    for version in args.versions:
        venv = tempfile.mkdtemp(prefix=f"op-registry-tf-{version}-")
        shutil.rmtree(venv)
        try:
            registry = dump(install(version, base, venv))
        finally:
            shutil.rmtree(venv, ignore_errors=True)
        if not registry["tensorflow"].startswith(version + "."):
            sys.exit(f"make_op_registry: asked for TF {version}, got {registry['tensorflow']}")
        write(registry, f"tensorflow-cpu=={version}.* in a throwaway venv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
