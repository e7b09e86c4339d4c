"""Processes and models for the fault suite (tests/faults).

Killing `export-archive export` 20+ times costs a TensorFlow import (7-20 s here)
per run if every run is a fresh interpreter. `Zygote` pays it once: a process that
imports TensorFlow, Keras and export_archive and then forks one child per run. The
child resets its signals, redirects stdout/stderr to files and calls the very
`export_archive.cli.main` the console script calls, so kills, signals and races hit
the same code; only interpreter start-up and imports, where nothing is written,
are skipped (tests/faults/test_signals.py also runs the real console script once).

Forking is safe here because the zygote never creates a TensorFlow runtime (no
tensor, variable or model): that happens in each child after the fork.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
REPO = os.path.dirname(TESTS)
SERVE = {"endpoints": [{"name": "serve"}]}


def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("TF_USE_LEGACY_KERAS", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join([TESTS, env.get("PYTHONPATH", "")])
    return env


class Zygote:
    """Forks `export-archive` runs (or helper calls) from one warm process."""

    def __init__(self):
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from helpers.fault_models import _zygote_main; "
                                   "_zygote_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(), cwd=REPO,
            text=True, bufsize=1)
        ready = self._reply(timeout=180)
        assert ready == {"ready": True}, ready

    def _request(self, message: Dict[str, Any], timeout: float = 60) -> Dict[str, Any]:
        self._proc.stdin.write(json.dumps(message) + "\n")
        self._proc.stdin.flush()
        return self._reply(timeout)

    def _reply(self, timeout: float) -> Dict[str, Any]:
        readable, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not readable:
            raise TimeoutError(f"zygote gave no answer in {timeout} s")
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"zygote exited with {self._proc.wait()}")
        return json.loads(line)

    def spawn(self, argv: Optional[List[str]] = None, *, call: Optional[str] = None,
              args: Optional[list] = None, log: str, fsize: Optional[int] = None,
              cwd: Optional[str] = None) -> int:
        """Starts `export-archive ARGV` (or `call(*args)`, "module:function") in a
        fork; stdout goes to LOG.out, stderr to LOG.err. Returns the child's pid."""
        reply = self._request({"op": "spawn", "argv": argv, "call": call, "args": args or [],
                               "log": log, "fsize": fsize, "cwd": cwd})
        return reply["pid"]

    def wait(self, pid: int, timeout: float = 300) -> int:
        """The child's exit status: its code, or -N if signal N killed it."""
        try:
            return self._request({"op": "wait", "pid": pid}, timeout)["status"]
        except TimeoutError:
            os.kill(pid, 9)
            self._reply(30)
            raise

    def run(self, argv=None, *, log: str, timeout: float = 300, **kw) -> "Run":
        pid = self.spawn(argv, log=log, **kw)
        return Run(self.wait(pid, timeout), log)

    def close(self) -> None:
        self._proc.stdin.close()
        self._proc.wait(timeout=30)


class Run:
    def __init__(self, status: int, log: str):
        self.status = status
        self.stdout = _read(log + ".out")
        self.stderr = _read(log + ".err")

    def __repr__(self):
        return f"Run(status={self.status}, stderr={self.stderr[-2000:]!r})"


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _zygote_main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)   # stray prints must not corrupt the protocol
    # The children stand for `export-archive` started from a shell that set no
    # TF_CPP_MIN_LOG_LEVEL, so TF must load with the CLI's default, as it would there.
    os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    from export_archive import cli
    cli.quiet_native_logs([])
    import numpy  # noqa: F401
    import tensorflow  # noqa: F401
    import keras  # noqa: F401
    from export_archive import (archive, cli, describe, endpoints, publish,  # noqa: F401
                                sources, writer)
    proto.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        message = json.loads(line)
        if message["op"] == "spawn":
            pid = os.fork()
            if pid == 0:
                _child(message)
            proto.write(json.dumps({"pid": pid}) + "\n")
        elif message["op"] == "wait":
            _, status = os.waitpid(message["pid"], 0)
            proto.write(json.dumps({"status": os.waitstatus_to_exitcode(status)}) + "\n")


def _child(message: Dict[str, Any]) -> None:
    import importlib
    import resource
    import signal
    import traceback
    code = 1
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)
        out = os.open(message["log"] + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(message["log"] + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(err, 2)
        if message["cwd"]:
            os.chdir(message["cwd"])
        if message["fsize"]:
            # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG.
            resource.setrlimit(resource.RLIMIT_FSIZE,
                               (message["fsize"], resource.RLIM_INFINITY))
        if message["argv"] is not None:
            from export_archive import cli
            code = cli.main(message["argv"])
        else:
            module, name = message["call"].split(":")
            code = getattr(importlib.import_module(module), name)(*message["args"]) or 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


# ---- functions the zygote's children call (`call="helpers.fault_models:NAME"`)


def save_dense_model(path: str, hidden: int, seed: int = 0) -> int:
    """A Keras 3 model of 1024 -> hidden -> 1024 -> 2 units, saved as .keras.

    hidden=4096 gives 8.4M float32 parameters: a SavedModel of about 34 MB.
    """
    import keras
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((1024,), name="features")
    x = keras.layers.Dense(hidden, activation="relu")(inputs)
    x = keras.layers.Dense(1024, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="prediction")(x))
    model.save(path)
    return 0


def inspect_export(path: str, result_file: str, full: bool = False) -> int:
    """Writes JSON describing the SavedModel at `path` to `result_file`.

    {"state": "absent"} or {"state": "complete", "signatures": [...], "elements": N},
    or {"state": "broken", "error": ...}. "complete" means saved_model.pb parses and
    every variable in the checkpoint reads back (TensorFlow verifies each tensor's
    checksum while reading); `full` also loads it with the TF1 loader under tag
    `serve`, as TF Serving does, and runs serving_default.
    """
    result: Dict[str, Any]
    if not os.path.lexists(path):
        result = {"state": "absent"}
    else:
        try:
            result = _inspect(path, full)
        except Exception as e:   # reported, and the test fails on "broken"
            result = {"state": "broken", "error": f"{type(e).__name__}: {e}"[:2000]}
    with open(result_file, "w") as f:
        json.dump(result, f)
    return 0


def _inspect(path: str, full: bool) -> Dict[str, Any]:
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    signatures = sorted(saved_model.meta_graphs[0].signature_def)
    reader = tf.train.load_checkpoint(os.path.join(path, "variables", "variables"))
    elements = 0
    for key in reader.get_variable_to_shape_map():
        elements += int(np.size(reader.get_tensor(key)))
    if full:
        with tf.compat.v1.Graph().as_default(), tf.compat.v1.Session() as session:
            meta = tf.compat.v1.saved_model.load(session, ["serve"], path)
            signature = meta.signature_def["serving_default"]
            feeds = {}
            for spec in signature.inputs.values():
                shape = [1 if d.size < 0 else d.size for d in spec.tensor_shape.dim]
                feeds[spec.name] = np.zeros(shape, tf.as_dtype(spec.dtype).as_numpy_dtype)
            session.run([t.name for t in signature.outputs.values()], feeds)
    return {"state": "complete", "signatures": signatures, "elements": elements}


def staging_leftovers(parent: str) -> List[str]:
    """Names in `parent` that an export must not leave behind."""
    return sorted(n for n in os.listdir(parent) if ".tmp-" in n or ".old-" in n)


def wait_for(predicate, timeout: float = 120, interval: float = 0.002) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def inspect(zygote: Zygote, path: str, scratch: str, full: bool = False) -> Dict[str, Any]:
    """`inspect_export` in a fork of the zygote (the test process stays TF-free)."""
    result_file = os.path.join(scratch, f"inspect-{time.monotonic_ns()}.json")
    run = zygote.run(call="helpers.fault_models:inspect_export",
                     args=[os.fspath(path), result_file, full], log=result_file)
    assert run.status == 0, run
    with open(result_file) as f:
        return json.load(f)


# Figures per group, printed at the end of the session by tests/faults/conftest.py
# (the junit xml counts items; these add what an item does not show).
FIGURES: List[str] = []


def report(group: str, tried: int, held: int, detail: str = "") -> None:
    FIGURES.append(f"faults/{group}: tried {tried} held {held} failed {tried - held}"
                   + (f" ({detail})" if detail else ""))


def inspect_exports(paths: List[str], result_file: str) -> int:
    """`inspect_export` of many paths in one process: {path: result}."""
    results = {}
    for path in paths:
        one = result_file + ".one"
        inspect_export(path, one)
        with open(one) as f:
            results[path] = json.load(f)
    with open(result_file, "w") as f:
        json.dump(results, f)
    return 0


def inspect_many(zygote: Zygote, paths: List[str], scratch: str) -> Dict[str, Any]:
    result_file = os.path.join(scratch, f"inspect-{time.monotonic_ns()}.json")
    run = zygote.run(call="helpers.fault_models:inspect_exports",
                     args=[[os.fspath(p) for p in paths], result_file], log=result_file)
    assert run.status == 0, run
    with open(result_file) as f:
        return json.load(f)


# ---- concurrency workers


def file_barrier(directory: str, key: str, me: int, parties: int,
                 timeout: float = 120) -> None:
    """Returns once all `parties` workers reached `key` (spinning, so they leave
    within a millisecond or so of each other)."""
    open(os.path.join(directory, f"ready-{key}-{me}"), "w").close()
    names = [os.path.join(directory, f"ready-{key}-{i}") for i in range(parties)]
    if not wait_for(lambda: all(os.path.exists(n) for n in names), timeout, 0.0002):
        raise TimeoutError(f"barrier {key}: a worker did not arrive")


def race_exports(workdir: str, me: int, rounds: int) -> int:
    """Worker `me` of two: exports one tiny model to `workdir`/new-R (without
    overwrite) and `workdir`/old-R (with overwrite, over a previous export) for
    each round R, meeting the other worker right before each publishing rename.
    Writes {"new-R"|"old-R": outcome} to `workdir`/result-ME.json."""
    from export_archive import publish, writer
    from helpers import models
    model = models.single_input("keras3", "functional")
    config = {"endpoints": [{"name": f"writer{me}"}]}
    real_publish = publish.publish
    key = {}

    def publish_together(*args, **kwargs):
        file_barrier(workdir, key["now"], me, 2)
        return real_publish(*args, **kwargs)

    publish.publish = publish_together   # only the timing changes
    results = {}
    for r in range(rounds):
        for name, overwrite in ((f"new-{r}", False), (f"old-{r}", True)):
            key["now"] = name
            try:
                result = writer.export(model, config, os.path.join(workdir, name),
                                       overwrite=overwrite)
                results[name] = {"outcome": "replaced" if result.replaced_previous
                                 else "published"}
            except writer.OutputExistsError as e:
                results[name] = {"outcome": "refused", "message": str(e)}
    with open(os.path.join(workdir, f"result-{me}.json"), "w") as f:
        json.dump(results, f)
    return 0


def race_publish(parent: str, me: int, rounds: int, overwrite: bool, fallback: bool,
                 files: int, barrier, results) -> None:
    """Publish-primitive worker (no TensorFlow): stages `files` files holding its
    id, meets the others at `barrier`, publishes to `parent`/mR; reports outcomes."""
    from export_archive import publish
    if fallback:
        publish._renameat2_fn = None   # the rename(2)-only path of other systems
    outcomes = []
    for r in range(rounds):
        out = os.path.join(parent, f"m{r}")
        with publish.Staging(out) as staging:
            for i in range(files):
                with open(os.path.join(staging.path, f"part-{i}"), "w") as f:
                    f.write(str(me))
            barrier.wait()
            try:
                outcomes.append("replaced" if publish.publish(staging.path, out, overwrite)
                                else "published")
            except FileExistsError:
                outcomes.append("refused")
    results.put((me, outcomes))


def export_argv(model: str, out: str, endpoint: str = "serve",
                overwrite: bool = False) -> List[str]:
    """`export-archive export` of `model` to `out` with one endpoint named `endpoint`."""
    return (["export", "--model", model, "--output", out, "--config",
             json.dumps({"endpoints": [{"name": endpoint}]})]
            + (["--overwrite"] if overwrite else []))


def save_models(zygote: Zygote, root: str, hidden: Dict[str, int]) -> Dict[str, str]:
    """`save_dense_model` for each name -> hidden width; returns name -> .keras path."""
    paths = {}
    for name, width in hidden.items():
        paths[name] = os.path.join(root, f"{name}.keras")
        run = zygote.run(call="helpers.fault_models:save_dense_model",
                         args=[paths[name], width], log=paths[name])
        assert run.status == 0, run
    return paths
