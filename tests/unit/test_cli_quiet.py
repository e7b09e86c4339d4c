"""The CLI's quiet default: which warnings it hides, and when it hides none (no TensorFlow)."""

import os
import sys
import types
import warnings

import pytest

from export_archive import cli

pytestmark = pytest.mark.unit


def shown(module, category=FutureWarning):
    """Whether a warning raised in `module` passes the filters installed now."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit("a notice", category, f"{module}.py", 1, module=module)
    return bool(caught)


@pytest.fixture()
def clean(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setattr(sys, "warnoptions", [])
    monkeypatch.setattr(cli, "_quiet_native", False)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield


def test_quiet_by_default_hides_third_party_deprecations_only(clean):
    cli.quiet_native_logs(["describe", "dir"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3" and cli._quiet_native
    for module in ("google.api_core._python_version_support", "tensorflow.python.x", "keras"):
        assert not shown(module) and not shown(module, DeprecationWarning)
    assert shown("tensorflow.python.x", UserWarning)
    for module in ("export_archive.writer", "my_factories", "tensorflowish"):
        assert shown(module)


def test_verbose_and_the_users_own_settings_win(clean, monkeypatch):
    cli.quiet_native_logs(["--verbose", "describe", "dir"])
    assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ and shown("google.api_core")
    assert not cli._quiet_native

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.setattr(sys, "warnoptions", ["default"])   # python -W default
    cli.quiet_native_logs(["describe", "dir"])
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and shown("google.api_core")
    assert not cli._quiet_native   # the user's level: TensorFlow's lines are theirs to see


def test_tensorflow_start_up_lines_stay_off_stderr_unless_an_import_fails(
        clean, monkeypatch, capfd):
    """TF 2.18+ writes its start-up lines through absl whatever TF_CPP_MIN_LOG_LEVEL
    says; the CLI sends file descriptor 2 elsewhere while TensorFlow loads."""
    monkeypatch.setattr(cli, "_quiet_native", True)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    with cli._tensorflow_loading_quietly():
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on.\n")
        monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    assert capfd.readouterr().err == ""

    monkeypatch.delitem(sys.modules, "tensorflow")
    with pytest.raises(ImportError, match="no tensorflow"):
        with cli._tensorflow_loading_quietly():
            os.write(2, b"libtensorflow_framework.so.2: cannot open shared object file\n")
            raise ImportError("no tensorflow")
    assert "cannot open shared object file" in capfd.readouterr().err
    print("after", file=sys.stderr)
    assert capfd.readouterr().err == "after\n"   # file descriptor 2 is back
