"""A serving check the machine cannot hold is refused before anything is written.

The machine's free memory is the one figure faked here (`memory.available_bytes`):
the model, the archive, the writer and the CLI are real. What the check needs is the
model's weights, counted by the writer from the archive it built, so the test derives
it from the model itself, for Keras 3 and tf_keras models alike.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import export_archive
from export_archive import cli, contract_process, memory
from export_archive.errors import InputError
from helpers import models
from helpers.models import sample

pytestmark = pytest.mark.integration

CONFIG = {"endpoints": [{"name": "serve"}], "check": {"enabled": True}}


def weight_bytes(model):
    return sum(int(np.prod(w.shape)) * np.dtype(w.dtype if isinstance(w.dtype, str)
                                                 else w.dtype.name).itemsize
               for w in model.weights)


@pytest.mark.parametrize("flavor", ["keras3", "tf_keras"])
def test_check_bigger_than_free_memory_is_refused_before_writing(flavor, tmp_path,
                                                                monkeypatch):
    model = models.single_input(flavor, "functional")
    needed = weight_bytes(model)
    monkeypatch.setattr(memory, "available_bytes", lambda: needed - 1)
    with pytest.raises(InputError) as info:
        export_archive.export(model, CONFIG, tmp_path / "out")
    assert info.value.where == "check"
    assert f"({needed} bytes" in str(info.value) and f"({needed - 1} bytes)" in str(info.value)
    # Nothing written, nothing staged, and no check process left waiting.
    assert os.listdir(tmp_path) == []
    assert contract_process._waiting is None


def test_export_without_check_is_not_refused(tmp_path, monkeypatch):
    model = models.single_input("keras3", "functional")
    monkeypatch.setattr(memory, "available_bytes", lambda: 0)
    export_archive.export(model, {"endpoints": [{"name": "serve"}]}, tmp_path / "out")
    revived = tf.saved_model.load(str(tmp_path / "out"))
    for batch in (1, 5):
        np.testing.assert_allclose(revived.serve(sample(batch)),
                                   model(sample(batch), training=False), atol=1e-5)


def test_cli_refusal_is_a_user_error_with_the_fix(tmp_path, monkeypatch, capsys):
    model = models.single_input("keras3", "functional")
    model.save(tmp_path / "model.keras")
    monkeypatch.setattr(memory, "available_bytes", lambda: 10)
    code = cli.main(["export", "--model", str(tmp_path / "model.keras"), "--config",
                     json.dumps({"endpoints": [{"name": "serve"}]}), "--check",
                     "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USER_ERROR, err
    assert "`check`" in err and "--no-check" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
