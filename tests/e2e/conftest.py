"""The main-job runs of the e2e modules are queued to run in the background once
the session's tests are collected (helpers/background.py says why): each module
that defines MAIN_JOB_ARGS and has a selected test using the `main_job` fixture
gets its run queued then, and `main_job` hands it to the module's tests. The e2e
modules that run their pipelines in this process (contract, infra) run meanwhile."""

import pytest

from helpers import background


RERUN = ":rerun"


def _uses(item, fixture) -> bool:
    return fixture in getattr(item, "fixturenames", ()) and hasattr(item.module,
                                                                    "MAIN_JOB_ARGS")


def pytest_collection_finish(session):
    if not background.should_start(session.config):
        return
    from helpers import local_pipeline
    config, factory = session.config, session.config._tmp_path_factory
    modules = {}
    for item in session.items:
        if _uses(item, "main_job"):
            modules.setdefault(item.module.__name__, item.module)
    for name, module in modules.items():
        def first_use(fixture, name=name):
            return background.first_index(
                session.items, lambda i: _uses(i, fixture) and i.module.__name__ == name)
        order = first_use("main_job")
        if order is None:
            continue
        background.submit(config, name, order, local_pipeline.new_main_job(
            factory, name, module.MAIN_JOB_ARGS))
        # The rerun's tests use the first run too, so it is queued after it (and one
        # job runs at a time): it starts once the first run has ended.
        order = first_use("main_job_rerun")
        if order is not None:
            background.submit(config, name + RERUN, order,
                              _rerun(config, name, module.MAIN_JOB_ARGS))


def _rerun(config, name, args):
    """A starter: the main job again, in the first run's root (its TFX cache), once
    the first run has ended (never two runs in one root at once)."""
    from helpers import local_pipeline

    def start():
        first = background.take(config, name, None)
        first.process.wait()
        return local_pipeline.start_main_job(first.root, *args)
    return start


@pytest.fixture(scope="module")
def main_job(request, tmp_path_factory):
    """The module's run of the main job with its MAIN_JOB_ARGS (`job.root` is its
    --root), queued at collection to run in the background, or started now."""
    from helpers import local_pipeline
    name = request.module.__name__
    return background.take(request.config, name, local_pipeline.new_main_job(
        tmp_path_factory, name, request.module.MAIN_JOB_ARGS))


@pytest.fixture(scope="module")
def main_job_rerun(request, main_job):
    """The same run again in the same root, once `main_job` has ended: queued at
    collection after it, or started now (after waiting for it to end)."""
    name = request.module.__name__
    return background.take(request.config, name + RERUN,
                           _rerun(request.config, name, request.module.MAIN_JOB_ARGS))
