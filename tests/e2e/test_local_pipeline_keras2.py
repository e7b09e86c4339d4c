"""The main job with the Keras 2 Trainer (tf.keras with TF_USE_LEGACY_KERAS=1, saved
with tf.saved_model.save as TFX's own examples do). The flag must be set before
TensorFlow loads, so the job runs in its own process, as a user runs it."""

import os

import pytest
import tensorflow as tf

from helpers.local_pipeline import (artifact_dir, check_pushed_model, component_lines,
                                    main_job_result, summary_value)

pytestmark = [pytest.mark.e2e, pytest.mark.tfx]

NAME = "export-archive-penguin-keras2"
# The run starts in the background when the session's tests are collected
# (conftest.py: the `main_job` fixture).
MAIN_JOB_ARGS = ["--keras", "2", "--train-steps", "30"]


def test_keras2_pipeline_pushes_a_served_model(main_job):
    root = main_job.root
    stdout = main_job_result(main_job).stdout
    assert ("Trainer", "done") in component_lines(stdout)
    assert summary_value(stdout, "Serving check") == "passed"
    pushed = summary_value(stdout, "Pushed model")

    # The Trainer saved with tf.saved_model.save (no Keras metadata): compare with its
    # restored call function, the way TF would serve the Trainer's own model.
    trainer = tf.saved_model.load(
        os.path.join(artifact_dir(root, NAME, "Trainer", "model"), "Format-Serving"))
    check_pushed_model(pushed, root, NAME, lambda f: trainer(f, training=False).numpy())
