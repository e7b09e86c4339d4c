"""Queues the TFX trainer zoo's runner to run in the background once the session's tests
are collected (zoo/tfx_trainer_job.py says why); test_tfx_trainers.py waits for it."""

import importlib.util

from helpers import background


def pytest_collection_finish(session):
    if not background.should_start(session.config):
        return
    if importlib.util.find_spec("tfx") is None:   # the current lane: the tests skip
        return
    from zoo import tfx_trainer_job
    modules = tfx_trainer_job.selected_modules(session.items, tfx_trainer_job.reasons())
    if modules:
        root = session.config._tmp_path_factory.mktemp("tfx_trainers")
        order = background.first_index(session.items, tfx_trainer_job.is_trainer_test)
        background.submit(session.config, tfx_trainer_job.KEY, order,
                          lambda: tfx_trainer_job.start(root, modules))
