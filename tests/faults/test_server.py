"""Faults of the local TF Serving child: a killed executor, a model the server cannot load.

The server is the TF Serving test double (tests/helpers/fake_tf_serving.py): no
real `tensorflow_model_server` exists on these machines. It honours the flags
this suite depends on as the real binary does (`--max_num_load_retries`,
`--load_retry_interval_micros`) and logs load errors in TF Serving's words.

- A SIGKILLed process that started the server (nothing of ours runs, no
  `finally`) leaves no server behind: the kernel kills it (PR_SET_PDEATHSIG).
- A model the server cannot load fails the validation at once, with the
  server's own load error, not after minutes of retries with a deadline.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("tfx")
psutil = pytest.importorskip("psutil")

from export_archive.components.infra_validator import spec  # noqa: E402
from helpers import fake_tf_serving  # noqa: E402
from helpers import infra_fixtures as ifx  # noqa: E402

pytestmark = pytest.mark.faults

# Starts the server the way the executor does (LocalProcessRunner, from the thread
# that then waits), prints its pid, waits until it serves, and sleeps: the test
# SIGKILLs this process.
LAUNCHER = r"""
import sys, time
from export_archive.components.infra_validator.local_process import (
    LocalProcessConfig, LocalProcessRunner)
model_path, binary, log_path = sys.argv[1:4]
runner = LocalProcessRunner(model_path=model_path, model_name="tiny",
                            config=LocalProcessConfig(binary=binary), log_path=log_path)
runner.Start()
print(runner.process.pid, flush=True)
runner.WaitUntilRunning(time.time() + 300)
print(runner.GetEndpoint(), flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def server_binary(tmp_path_factory):
    return fake_tf_serving.install_wrapper(tmp_path_factory.mktemp("bin"))


@pytest.fixture(scope="module")
def tiny_saved_model(tmp_path_factory):
    """`<base>/1/`: the smallest SavedModel TF Serving can load and serve."""
    import tensorflow as tf

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def serve(self, x):
            return {"y": 2.0 * x}

    module = Double()
    path = tmp_path_factory.mktemp("models") / "tiny" / "1"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return str(path)


def _gone(pid: int) -> bool:
    """No such process, or only its zombie (dead; nobody reaped it yet)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _listening(port: int) -> bool:
    return any(c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN
               for c in psutil.net_connections("tcp"))


def test_server_dies_when_its_starter_is_sigkilled(tmp_path, server_binary,
                                                   tiny_saved_model):
    log_path = str(tmp_path / "server.log")
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, tiny_saved_model,
                                 server_binary, log_path],
                                stdout=subprocess.PIPE, text=True)
    server_pid = None
    try:
        server_pid = int(launcher.stdout.readline())
        endpoint = launcher.stdout.readline().strip()
        assert endpoint.startswith("localhost:"), open(log_path).read()[-3000:]
        # The state worth protecting: the model is loaded and the port is held.
        assert not _gone(server_pid)
        assert "Successfully loaded servable version {name: tiny version: 1}" in open(
            log_path).read()

        launcher.kill()   # SIGKILL: no finally, no Stop(), no signal handler runs
        launcher.wait(30)
        port = int(endpoint.split(":")[1])
        # The kernel tears the process down thread by thread: its zombie can show
        # up a moment before its socket is closed.
        deadline = time.time() + 5
        while (not _gone(server_pid) or _listening(port)) and time.time() < deadline:
            time.sleep(0.1)
        assert _gone(server_pid), (
            f"the model server (pid {server_pid}) outlived the process that started it")
        assert not _listening(port), f"port {port} is still held"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait(30)
        if server_pid is not None and not _gone(server_pid):
            os.kill(server_pid, signal.SIGKILL)   # only if the assertion above failed


def _broken_model(root):
    """A Model artifact whose saved_model.pb is not a SavedModel (a truncated copy)."""
    from tfx.types import standard_artifacts
    model = ifx.artifact(standard_artifacts.Model, root)
    serving = os.path.join(model.uri, "Format-Serving")
    os.makedirs(os.path.join(serving, "variables"))
    with open(os.path.join(serving, "saved_model.pb"), "wb") as f:
        f.write(b"\x08\x01\x12\xff\xff")   # a proto cut off in the middle of a field
    return model


def _validate_broken(tmp_path, server_binary, **config):
    start = time.time()
    blessing = ifx.run_infra_validator(tmp_path / "iv", _broken_model(tmp_path / "model"),
                                       local_process_config={"binary": server_binary,
                                                             **config},
                                       max_loading_time_seconds=300)
    elapsed = time.time() - start
    assert blessing.get_int_custom_property(spec.BLESSED_PROPERTY) == 0
    reason = blessing.get_string_custom_property(spec.FAILURE_PROPERTY)
    with open(os.path.join(blessing.uri, spec.LOGS_DIR, "attempt-1.log")) as f:
        log = f.read()
    return reason, log, elapsed


def test_broken_model_fails_at_once_with_the_servers_error(tmp_path, server_binary):
    reason, log, elapsed = _validate_broken(tmp_path, server_binary)
    # The default: one load, no retries, so the server exits at its first error.
    assert "--max_num_load_retries=0" in log.splitlines()[0]
    assert log.count(" failed: ") == 1 and " retry: " not in log
    # The failure is the server's own error, not a deadline.
    assert "JobAborted" in reason and "exited with code 255" in reason, reason
    assert "the model server reported: " in reason
    assert "Loading servable: {name: scalar version: " in reason
    assert "Failed to start server" in reason
    assert "DeadlineExceeded" not in reason
    # Well inside max_loading_time_seconds=300 (the binary's defaults: 5 min).
    assert elapsed < 150, f"took {elapsed:.0f} s"


def test_configured_load_retries_reach_the_server(tmp_path, server_binary):
    reason, log, _ = _validate_broken(tmp_path, server_binary, max_num_load_retries=2,
                                      load_retry_interval_micros=100_000)
    assert "--max_num_load_retries=2 --load_retry_interval_micros=100000" in log
    assert log.count(" failed: ") == 3, log[-3000:]
    assert "retry: 2" in log and "exhausted max_num_retries: 2" in log
    # The same error, logged for each of the three tries, is named once (the log's
    # tail follows in the failure text, with every line).
    errors = reason.split("Model server log", 1)[0]
    assert errors.count("Loading servable: {name: scalar version: ") == 1, reason


RETRYING_SERVER = r"""
import sys, time
print("E util/retrier.cc:40] Loading servable: {name: m version: 1} failed: "
      "DATA_LOSS: Can't parse saved_model.pb as binary proto", flush=True)
print("I util/retrier.cc:33] Retrying of Loading servable: {name: m version: 1} retry: 1",
      flush=True)
time.sleep(600)
"""


def test_deadline_while_retrying_names_the_load_error(tmp_path):
    """A server still retrying at the deadline: the failure says what it failed on."""
    from tfx.components.infra_validator import error_types
    from export_archive.components.infra_validator import executor
    from export_archive.components.infra_validator.local_process import (
        LocalProcessConfig, LocalProcessRunner)

    script = tmp_path / "retrying_server"
    script.write_text(f"#!{sys.executable}\n{RETRYING_SERVER}")
    script.chmod(0o755)
    runner = LocalProcessRunner(str(tmp_path / "m" / "1"), "m",
                                LocalProcessConfig(binary=str(script), max_num_load_retries=5,
                                                   stop_timeout_seconds=1),
                                str(tmp_path / "server.log"))
    runner.Start()
    try:
        with pytest.raises(error_types.DeadlineExceeded) as info:
            runner.WaitUntilRunning(time.time() + 3)
    finally:
        runner.Stop()
    text = executor._describe(info.value)   # pylint: disable=protected-access
    assert "failed: DATA_LOSS: Can't parse saved_model.pb" in text
    assert "max_num_load_retries=0" in text and "increasing" not in text
