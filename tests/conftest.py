"""Shared pytest setup: quiet TensorFlow logs and keep Keras 3 as `keras`."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# tf.keras must stay Keras 3 in the test process; tf_keras models are built with
# `import tf_keras` directly, the way TFX's Keras 2 modules get them.
os.environ.pop("TF_USE_LEGACY_KERAS", None)


def pytest_collection_modifyitems(config, items):
    """Tests marked `tfx` skip where TFX is not installed (the current lane), saying
    which lane runs them. find_spec, not an import: importing TFX takes up to 50 s."""
    import importlib.util
    if importlib.util.find_spec("tfx") is not None:
        return
    import pytest
    skip = pytest.mark.skip(reason="needs TFX, which this lane lacks (TFX >= 1.17 needs "
                                   "glibc >= 2.38): runs in the pinned TFX lane (.venv)")
    for item in items:
        if "tfx" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_setup(item):
    """The next queued background job starts once the one before it has ended
    (looked at before every test and every fixture setup)."""
    from helpers import background
    background.advance(item.config)


def pytest_fixture_setup(fixturedef, request):
    from helpers import background
    background.advance(request.config)


def pytest_sessionfinish(session):
    """Background jobs whose tests never ran (an interrupted session, -x) stop."""
    from helpers import background
    background.stop_all(session.config)
