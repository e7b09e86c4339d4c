"""The main job's console: component lines, the summary, quiet vs --verbose (no TensorFlow)."""

import doctest
import importlib.util
import io
import logging
import os
import sys
import types
import warnings

import pytest

from export_archive.pipelines import console, local_runner

pytestmark = pytest.mark.unit


def clock(*times):
    return iter(times).__next__


def absl_like_logger(progress):
    """A logger fed the way TFX feeds the `absl` one, with the hook attached."""
    logger = logging.getLogger(f"test_console.{id(progress)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(console.LauncherLogHook(progress))
    return logger


def test_module_examples_run():
    assert doctest.testmod(console).failed == 0


@pytest.mark.tfx
def test_tfx_still_logs_the_messages_the_hook_reads():
    """Read TFX's source (without importing it): a reworded message would silently
    drop the component lines."""
    tfx_dir = os.path.dirname(importlib.util.find_spec("tfx").origin)
    with open(os.path.join(tfx_dir, "orchestration", "local", "local_dag_runner.py")) as f:
        runner = f.read()
    with open(os.path.join(tfx_dir, "orchestration", "portable", "launcher.py")) as f:
        launcher = f.read()
    assert f"'{console.RUNNING_MSG}'" in runner and f"'{console.FINISHED_MSG}'" in runner
    assert f"'{console.CACHED_MSG}'" in launcher
    assert f"'{console.SKIPPED_MSGS[0]}'" in launcher
    assert f"'{console.SKIPPED_MSGS[1]}'" in runner


def test_a_line_per_component_start_and_end_with_status_and_time():
    out = io.StringIO()
    progress = console.ComponentProgress(out, quiet_start=["latest_blessed_model_resolver"],
                                         clock=clock(0, 3.25, 3.25, 3.5, 4, 95, 95, 95.5))
    log = absl_like_logger(progress)
    log.info(console.RUNNING_MSG, "CsvExampleGen")
    log.info("Going to run a new execution %d", 3)       # any other record: ignored
    log.info(console.FINISHED_MSG, "CsvExampleGen")
    log.info(console.RUNNING_MSG, "latest_blessed_model_resolver")
    log.info(console.FINISHED_MSG, "latest_blessed_model_resolver")
    log.info(console.RUNNING_MSG, "Trainer")
    log.info(console.CACHED_MSG, 7)
    log.info(console.FINISHED_MSG, "Trainer")
    log.info(console.RUNNING_MSG, "Pusher")
    log.info(console.SKIPPED_MSGS[0], "Pusher")
    log.info(console.FINISHED_MSG, "Pusher")
    assert out.getvalue().splitlines() == [
        "  CsvExampleGen          running",
        "  CsvExampleGen          done      3.2s",
        "  latest_blessed_model_resolver done      0.2s",
        "  Trainer                running",
        "  Trainer                cached   1m31s",
        "  Pusher                 running",
        "  Pusher                 skipped   0.5s",
    ]
    assert progress.counts() == {"done": 2, "cached": 1, "skipped": 1}


def test_on_a_terminal_the_end_line_replaces_the_start_line():
    out = io.StringIO()
    progress = console.ComponentProgress(out, rewrite=True, clock=clock(0, 1))
    progress.started("Transform")
    assert out.getvalue() == "  Transform              running"
    progress.finished("Transform")
    assert out.getvalue().endswith("running\r\x1b[K  Transform              done      1.0s\n")


def test_a_failure_names_the_component_the_error_and_the_log():
    out = io.StringIO()
    progress = console.ComponentProgress(out, clock=clock(0, 12))
    progress.started("ModelExporter")
    failed = progress.failed()
    assert failed.node_id == "ModelExporter" and failed.status == "FAILED"
    assert out.getvalue().splitlines()[-1] == "  ModelExporter          FAILED   12.0s"
    error = ValueError("export config field `endpoints[0].kind`: ...\nsecond line")
    lines = console.render_failure("ModelExporter", error, "/runs/x/logs/run.log")
    assert lines == ["FAILED: component ModelExporter failed: ValueError: "
                     "export config field `endpoints[0].kind`: ...",
                     "Full log (traceback, TFX, Beam and TensorFlow output): /runs/x/logs/run.log"]
    assert "before any component ran" in console.render_failure(None, error, None)[0]
    assert "reading the run's results" in console.render_failure(None, error, None, True)[0]


def signature(name, inputs, outputs):
    return types.SimpleNamespace(name=name, method_name="tensorflow/serving/predict",
                                 inputs=inputs, outputs=outputs)


RAW_INPUTS = {k: "float32[?]" for k in ("body_mass_g", "culmen_depth_mm", "culmen_length_mm",
                                         "flipper_length_mm")}


def test_summary_of_a_pushed_model_fits_a_screen():
    summary = console.Summary(
        pushed="/runs/p/serving_model/17", serving_check="passed", evaluator="blessed",
        contract="no baseline: contract not compared", report="/runs/p/report/7/report.html",
        metadata="/runs/p/metadata.sqlite", log_file="/runs/p/logs/run.log", seconds=135,
        counts={"done": 7, "cached": 2},
        signatures=[signature("serve_raw", {**RAW_INPUTS, "island": "string[?]"},
                              {"logits": "float32[?,3]"}),
                    signature("serving_default", {"examples": "string[?]"},
                              {"logits": "float32[?,3]"})])
    assert console.render_summary(summary) == [
        "Finished in 2m15s (2 cached, 7 done)",
        "Pushed model: /runs/p/serving_model/17",
        "  serve_raw (predict): body_mass_g, culmen_depth_mm, culmen_length_mm, "
        "flipper_length_mm, island -> logits float32[?,3]",
        "  serving_default (predict): examples string[?] -> logits float32[?,3]",
        "Serving check: passed",
        "Evaluator: blessed",
        "InfraValidator: not in this pipeline",
        "Serving contract: no baseline: contract not compared",
        "Report: /runs/p/report/7/report.html",
        "ML Metadata: /runs/p/metadata.sqlite",
        "Log of TFX, Beam and TensorFlow: /runs/p/logs/run.log",
    ]


def test_summary_when_nothing_was_pushed_says_why():
    lines = console.render_summary(console.Summary(
        not_pushed_reason="ModelExporter did not publish: the model is not blessed",
        serving_check="passed", infra_validator_absent_reason="not in this pipeline "
        "(no tensorflow_model_server on PATH)"))
    assert lines[1] == "Not pushed: ModelExporter did not publish: the model is not blessed"
    assert "Evaluator: not in this pipeline" in lines
    assert "InfraValidator: not in this pipeline (no tensorflow_model_server on PATH)" in lines
    assert not any(line.startswith("Pushed model") for line in lines)


def test_many_tensors_collapse_to_a_count():
    many = {f"feature_{i:02d}": "float32[?]" for i in range(30)}
    [line] = console.signature_lines([signature("serve", many, {"y": "float32[?,1]"})])
    assert line == "  serve (predict): 30 tensors -> y float32[?,1]"


def test_verbose_installs_no_filter_and_redirects_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    log = str(tmp_path / "logs" / "run.log")
    with warnings.catch_warnings():
        before = list(warnings.filters)
        with local_runner.console_output(True, log) as (out, log_file):
            assert out is sys.stdout and log_file is None
            assert warnings.filters == before
        assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    assert not os.path.exists(log)


def test_quiet_filters_known_warnings_and_sends_descriptors_to_the_log(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    log = str(tmp_path / "logs" / "run.log")
    with warnings.catch_warnings():
        warnings.resetwarnings()   # pytest.ini ignores FutureWarning: only ours count here
        with local_runner.console_output(False, log) as (out, log_file):
            os.write(1, b"from a C++ library\n")
            os.write(2, b"from a subprocess\n")
            with warnings.catch_warnings(record=True) as shown:
                warnings.warn_explicit("old API", FutureWarning, "x.py", 1, module="tfx.types")
                warnings.warn_explicit("ours", FutureWarning, "x.py", 2,
                                       module="export_archive.x")
                warnings.warn_explicit("mine", UserWarning, "x.py", 3, module="tfx.types")
            assert sorted(str(w.message) for w in shown) == ["mine", "ours"]
            out.write("progress line\n")
            assert log_file == log
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    with open(log) as f:
        text = f.read()
    assert "from a C++ library" in text and "from a subprocess" in text
    assert "progress line" not in text


class FakeArtifact:
    """The custom-property reading part of tfx.types.Artifact."""

    def __init__(self, **properties):
        self.properties = properties

    def has_custom_property(self, name):
        return name in self.properties

    def get_string_custom_property(self, name):
        return self.properties[name]

    get_int_custom_property = get_string_custom_property


@pytest.mark.tfx
def test_not_pushed_names_the_step_that_said_no():
    roles = local_runner.Roles(exporter="ModelExporter", evaluator=("Evaluator", "blessing"),
                               pusher=("Pusher", "pushed_model"))
    reason = local_runner.not_pushed_reason
    declined = FakeArtifact(published=0, not_published_reason="model_blessing: not blessed")
    assert reason(roles, declined, None, console.Summary()) == \
        "ModelExporter did not publish: model_blessing: not blessed"
    assert reason(roles, FakeArtifact(), FakeArtifact(pushed=0),
                  console.Summary(evaluator="NOT blessed")) == \
        "the Evaluator did not bless the model"
    assert reason(roles, FakeArtifact(), None, console.Summary(evaluator="blessed")) == \
        "Pusher did not run in this run"
    assert reason(local_runner.Roles(), None, None, console.Summary()) == \
        "this pipeline has no Pusher"


class FakePipeline:
    components = [types.SimpleNamespace(id=i) for i in ("CsvExampleGen", "Trainer", "Pusher")]


@pytest.fixture
def offline_main(monkeypatch):
    """main() with the pipeline replaced: what it prints and returns, in milliseconds."""
    monkeypatch.setattr(local_runner, "build_pipeline", lambda *a, **k: FakePipeline())
    monkeypatch.setattr(local_runner, "pipeline_roles", lambda p: local_runner.Roles())
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    return monkeypatch


def test_a_failed_component_exits_1_naming_it_and_the_log(offline_main, tmp_path, capfd):
    def run_local(_):
        absl = logging.getLogger("absl")
        absl.info(console.RUNNING_MSG, "CsvExampleGen")
        absl.info(console.FINISHED_MSG, "CsvExampleGen")
        absl.info(console.RUNNING_MSG, "Trainer")
        print("epoch 1/10 ...")                  # the Trainer's own output: to the log
        raise RuntimeError("out of memory\nsecond line")
    offline_main.setattr(local_runner, "run_local", run_local)
    with warnings.catch_warnings():
        assert local_runner.main(["--root", str(tmp_path)]) == 1
    lines = capfd.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines[1:5]] == [
        ["CsvExampleGen", "running"], ["CsvExampleGen", "done"],
        ["Trainer", "running"], ["Trainer", "FAILED"]]
    assert lines[5] == "FAILED: component Trainer failed: RuntimeError: out of memory"
    log = lines[6].split(": ", 1)[1]
    assert log.startswith(str(tmp_path)) and len(lines) == 7
    with open(log) as f:
        text = f.read()
    assert "Traceback" in text and "second line" in text and "epoch 1/10" in text
    assert "Component Trainer is running." in text


def test_a_run_that_pushed_nothing_exits_0_saying_why(offline_main, tmp_path, capfd):
    offline_main.setattr(local_runner, "run_local", lambda _: None)
    offline_main.setattr(local_runner, "collect_summary", lambda paths, p: console.Summary(
        not_pushed_reason="ModelExporter did not publish: not blessed"))
    with warnings.catch_warnings():
        assert local_runner.main(["--root", str(tmp_path)]) == 0
    out = capfd.readouterr().out
    assert "\nNot pushed: ModelExporter did not publish: not blessed\n" in out
    assert "Log of TFX, Beam and TensorFlow: " + str(tmp_path) in out
