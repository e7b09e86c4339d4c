"""pytest plugin: run a Keras wheel's own ExportArchive tests against stock or our archive.

`tests/integration/test_keras_export_suite.py` starts one pytest subprocess per
variant with ``-p keras_suite.plugin``; this plugin is configured by environment:

* ``KERAS_SUITE_VARIANT``: ``stock`` (the wheel's class) or ``ours`` (every
  module-level name bound to the stock class is rebound to our archive, which
  wraps the stock one).
* ``KERAS_SUITE_FLAVOR``: ``keras3`` or ``tf_keras`` (which `archive_class` to use).
* ``KERAS_SUITE_MODULE``: the module defining the stock class, e.g.
  ``keras.src.export.saved_model``. Its tests build archives through that
  module's global (``saved_model.ExportArchive()``, and `export_saved_model`
  / `Model.export` look the global up at call time), so rebinding it there and
  in its re-exports (``keras.export``, ``keras.src.export``, ...) substitutes
  ours everywhere without touching the test file.
* ``KERAS_SUITE_RESULTS``: where the JSON results are written.

Per test, the results hold the outcome, the failure text and the names of the
archive classes the test instantiated; the last lets the caller check that the
substitution reached every archive the test built, so an "ours" run can't
pass by silently exercising the stock class.
"""

import collections
import functools
import importlib
import json
import os
import sys

_outcomes = {}
_messages = {}
_instantiated = collections.defaultdict(list)
_current = [None]
_state = {}


def _rebind(stock, replacement):
    """Rebinds every already-imported ``<module>.ExportArchive`` that is `stock`."""
    rebound = []
    for name, module in list(sys.modules.items()):
        if module is not None and getattr(module, "ExportArchive", None) is stock:
            setattr(module, "ExportArchive", replacement)
            rebound.append(name)
    return sorted(rebound)


def _recording(factory):
    """`factory` (a class, or Keras 3.14+'s factory class), recording the type of
    each archive it makes for the running test; the name stays `factory`'s."""
    @functools.wraps(factory, updated=())
    def make(*args, **kwargs):
        made = factory(*args, **kwargs)
        _instantiated[_current[0]].append(type(made).__name__)
        return made
    return make


def pytest_configure(config):
    variant = os.environ["KERAS_SUITE_VARIANT"]
    module = importlib.import_module(os.environ["KERAS_SUITE_MODULE"])
    stock = module.ExportArchive
    _state.update(variant=variant, module=module, stock=stock)

    if variant == "ours":
        from export_archive import archive
        # Built before rebinding, so it wraps the stock class, not itself.
        replacement = archive.archive_class(os.environ["KERAS_SUITE_FLAVOR"])
    else:
        replacement = stock
    # Both variants go through a recorder, so that each test's archives are known
    # (Keras 3.14+'s stock ExportArchive() returns a backend class's instance).
    _state["rebound"] = _rebind(stock, _recording(replacement))


def pytest_runtest_logstart(nodeid, location):
    _current[0] = nodeid


def pytest_runtest_logreport(report):
    nodeid = report.nodeid
    if report.when == "setup":
        if report.failed:
            _outcomes[nodeid] = "error"
        elif report.skipped:
            _outcomes[nodeid] = "skipped"
    elif report.when == "call":
        _outcomes[nodeid] = report.outcome
    elif report.failed and _outcomes.get(nodeid) == "passed":
        _outcomes[nodeid] = "error"  # teardown failed
    if report.failed:
        _messages[nodeid] = report.longreprtext[-4000:]


def pytest_sessionfinish(session, exitstatus):
    module = _state.get("module")
    results = {
        "variant": _state.get("variant"),
        "exitstatus": int(exitstatus),
        "rebound": _state.get("rebound", []),
        "class_at_end": getattr(getattr(module, "ExportArchive", None), "__name__", None),
        "tests": {
            nodeid: {"outcome": outcome, "message": _messages.get(nodeid, ""),
                     "archives": sorted(set(_instantiated.get(nodeid, [])))}
            for nodeid, outcome in _outcomes.items()},
    }
    with open(os.environ["KERAS_SUITE_RESULTS"], "w") as f:
        json.dump(results, f, indent=1, sort_keys=True)
