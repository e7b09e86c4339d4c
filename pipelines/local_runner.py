"""The main job: the pipeline under LocalDagRunner with an embedded SQLite ML Metadata store.

    python -m export_archive.pipelines.local_runner [--keras 3|2] [--root runs] [--verbose]

Prints one line per component as it starts and ends, then a summary: where the
pushed model is, its signatures, the verdicts (serving check, Evaluator,
InfraValidator, contract guard) and where the report, the ML Metadata store and
the log are. Everything TFX, Beam and TensorFlow print goes to a log file under
the run root; --verbose shows it all instead. Exit 0 when the pipeline ran (also
when it decided not to push; the summary says why), 1 when a component failed.

Re-running reuses unchanged steps from the TFX cache. ModelExporter compares each
new model's serving contract with the last pushed one and stops a breaking change
before Pusher (docs/contract.md).
"""

import argparse
import contextlib
import dataclasses
import logging
import os
import shutil
import sys
import time
import traceback
from typing import IO, Iterator, List, Optional, Tuple

from absl import logging as absl_logging

# TensorFlow, TFX, ML Metadata and the component (which imports TFX) are imported in
# the functions that use them: after `select_keras`, which must precede the first
# TensorFlow import.
from export_archive.pipelines import console

# Pusher's custom properties on its PushedModel (private constants of
# tfx/components/pusher/executor.py, part of its MLMD contract).
PUSHED_PROPERTY, PUSHED_DESTINATION_PROPERTY = "pushed", "pushed_destination"
# Evaluator's and InfraValidator's verdict on their blessing artifacts.
BLESSED_PROPERTY = "blessed"


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="local_runner", description=__doc__.split("\n")[0])
    parser.add_argument("--keras", choices=["3", "2"], default="3",
                        help="Trainer module: Keras 3 (.keras file) or Keras 2 "
                             "(tf.keras with TF_USE_LEGACY_KERAS=1, tf.saved_model.save)")
    parser.add_argument("--root", default="runs",
                        help="directory for pipeline outputs, metadata, logs and pushed models")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--no-cache", action="store_true", help="disable the TFX cache")
    parser.add_argument("--no-infra-validate", dest="infra_validate", action="store_false",
                        help="leave InfraValidator out. By default it validates the export "
                             "against TF Serving (a local tensorflow_model_server process) "
                             "before pushing whenever that binary is on PATH; the summary "
                             "says which")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not compare the serving contract with the last pushed model")
    parser.add_argument("--module-files", action="store_true",
                        help="give Transform and Trainer their modules as files, the way "
                             "TFX's templates do: TFX then builds a wheel of them on every "
                             "run, and its cache notices edits to them. By default they are "
                             "import paths into the installed package (no wheel; an edited "
                             "module needs --no-cache)")
    parser.add_argument("--verbose", action="store_true",
                        help="show everything TFX, Beam and TensorFlow print, with no "
                             "warning filters, instead of writing it to the log file")
    return parser.parse_args(argv)


@dataclasses.dataclass
class RunPaths:
    name: str
    pipeline_root: str
    serving_model_dir: str
    metadata: str
    log_dir: str

    @classmethod
    def create(cls, root: str, keras_version: str) -> "RunPaths":
        name = f"export-archive-penguin-keras{keras_version}"
        base = os.path.join(os.path.abspath(root), name)
        return cls(name=name, pipeline_root=os.path.join(base, "pipeline"),
                   serving_model_dir=os.path.join(base, "serving_model"),
                   metadata=os.path.join(base, "metadata.sqlite"),
                   log_dir=os.path.join(base, "logs"))

    def new_log_file(self) -> str:
        return os.path.join(self.log_dir, time.strftime("run-%Y%m%d-%H%M%S.log"))


def latest_push(serving_model_dir: str) -> Optional[str]:
    """Pusher writes <base>/<version>/; the highest version is the latest push."""
    import tensorflow as tf
    if not tf.io.gfile.isdir(serving_model_dir):
        return None
    versions = [v.rstrip("/") for v in tf.io.gfile.listdir(serving_model_dir)
                if v.rstrip("/").isdigit()]
    return os.path.join(serving_model_dir, max(versions, key=int)) if versions else None


def connection_config(metadata_path: str):
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return config


def contract_summary(metadata_path: str) -> Optional[str]:
    """The newest exported model's `contract` property: what its comparison found."""
    import ml_metadata as mlmd
    from export_archive.components.tfx import spec
    models = [a for a in mlmd.MetadataStore(connection_config(metadata_path))
              .get_artifacts_by_type("Model") if spec.CONTRACT_PROPERTY in a.custom_properties]
    if not models:
        return None
    newest = max(models, key=lambda a: a.id)
    return newest.custom_properties[spec.CONTRACT_PROPERTY].string_value


def select_keras(keras_version: str) -> None:
    """Keras 2 as tf.keras for the Keras 2 Trainer. Must precede the first TensorFlow
    import (TFX's included): TensorFlow decides then what tf.keras is."""
    if keras_version == "2":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"


def build_pipeline(paths: RunPaths, keras_version: str = "3", train_steps: int = 100,
                   enable_cache: bool = True, infra_validate: bool = False,
                   contract_baseline: bool = True, module_files: bool = False):
    select_keras(keras_version)
    from tfx import v1 as tfx
    from export_archive.pipelines import pipeline
    return pipeline.create_pipeline(
        pipeline_name=paths.name, pipeline_root=paths.pipeline_root,
        serving_model_dir=paths.serving_model_dir,
        keras_version=keras_version, train_steps=train_steps, enable_cache=enable_cache,
        infra_validation={} if infra_validate else None,
        contract_baseline=contract_baseline,
        # Import paths, not files: TFX would package module files into a wheel
        # (running pip) at every run.
        modules_from_package=not module_files,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            paths.metadata))


@dataclasses.dataclass
class Roles:
    """Which node plays which part, found by type rather than by id (ids are settable)."""
    exporter: Optional[str] = None
    evaluator: Optional[Tuple[str, str]] = None    # (node id, output key)
    infra_validator: Optional[Tuple[str, str]] = None
    pusher: Optional[Tuple[str, str]] = None
    resolvers: Tuple[str, ...] = ()


def pipeline_roles(tfx_pipeline) -> Roles:
    from tfx import v1 as tfx
    from tfx.types import standard_artifacts
    from export_archive.components.tfx.component import ModelExporter
    roles = Roles()
    resolvers = []
    for component in tfx_pipeline.components:
        if isinstance(component, tfx.dsl.Resolver):
            resolvers.append(component.id)
            continue
        if isinstance(component, ModelExporter):
            roles.exporter = component.id
        for key, channel in component.outputs.items():
            if channel.type == standard_artifacts.ModelBlessing:
                roles.evaluator = (component.id, key)
            elif channel.type == standard_artifacts.InfraBlessing:
                roles.infra_validator = (component.id, key)
            elif channel.type == standard_artifacts.PushedModel:
                roles.pusher = (component.id, key)
    roles.resolvers = tuple(resolvers)
    return roles


def run_outputs(metadata_path: str, pipeline_name: str, node_ids) -> dict:
    """{node id: its output artifacts (key -> [Artifact])} in the newest pipeline run.

    Cached executions count: LocalDagRunner records them in the run's context with
    the outputs they reuse.
    """
    from tfx.dsl.compiler import compiler_utils, constants
    from tfx.orchestration import metadata
    from tfx.orchestration.portable.mlmd import execution_lib
    out = {}
    with metadata.Metadata(connection_config(metadata_path)) as m:
        runs = m.store.get_contexts_by_type(constants.PIPELINE_RUN_CONTEXT_TYPE_NAME)
        if not runs:
            return out
        newest_run = max(runs, key=lambda c: c.id)
        for node_id in node_ids:
            node = m.store.get_context_by_type_and_name(
                constants.NODE_CONTEXT_TYPE_NAME,
                compiler_utils.node_context_name(pipeline_name, node_id))
            if node is None:
                continue
            executions = execution_lib.get_executions_associated_with_all_contexts(
                m, [newest_run, node])
            if executions:
                newest = max(executions, key=lambda e: e.id)
                out[node_id] = execution_lib.get_output_artifacts(m, newest.id)
    return out


def _first(outputs: dict, node_and_key: Optional[Tuple[str, str]]):
    if node_and_key is None:
        return None
    node_id, key = node_and_key
    artifacts = outputs.get(node_id, {}).get(key) or []
    return artifacts[0] if artifacts else None


def _custom(artifact, name: str, kind: str = "string"):
    if artifact is None or not artifact.has_custom_property(name):
        return None
    return (artifact.get_string_custom_property(name) if kind == "string"
            else artifact.get_int_custom_property(name))


def collect_summary(paths: RunPaths, tfx_pipeline) -> console.Summary:
    """The summary's facts, from this run's executions in ML Metadata."""
    from export_archive import describe
    from export_archive.components.tfx import spec
    roles = pipeline_roles(tfx_pipeline)
    nodes = [n for n in (roles.exporter,) if n] + \
        [r[0] for r in (roles.evaluator, roles.infra_validator, roles.pusher) if r]
    outputs = run_outputs(paths.metadata, paths.name, nodes)
    model = _first(outputs, (roles.exporter, spec.MODEL_KEY)) if roles.exporter else None
    report = _first(outputs, (roles.exporter, spec.REPORT_KEY)) if roles.exporter else None
    evaluation = _first(outputs, roles.evaluator)
    infra = _first(outputs, roles.infra_validator)
    pushed_model = _first(outputs, roles.pusher)

    summary = console.Summary(
        serving_check=_custom(model, spec.SERVING_CHECK_PROPERTY),
        contract=_custom(model, spec.CONTRACT_PROPERTY),
        report=os.path.join(report.uri, spec.REPORT_HTML) if report is not None else None,
        metadata=paths.metadata)
    if roles.evaluator:
        summary.evaluator = console.blessing_verdict(
            _custom(evaluation, BLESSED_PROPERTY, "int")) or "did not run"
    if roles.infra_validator:
        summary.infra_validator = console.blessing_verdict(
            _custom(infra, BLESSED_PROPERTY, "int")) or "did not run"
    elif not _has_model_server():
        summary.infra_validator_absent_reason = \
            "not in this pipeline (no tensorflow_model_server on PATH)"
    else:
        summary.infra_validator_absent_reason = "not in this pipeline (--no-infra-validate)"

    if _custom(pushed_model, PUSHED_PROPERTY, "int") == 1:
        summary.pushed = _custom(pushed_model, PUSHED_DESTINATION_PROPERTY)
        summary.signatures = describe.describe(summary.pushed)
    else:
        summary.not_pushed_reason = not_pushed_reason(roles, model, pushed_model, summary)
    return summary


def not_pushed_reason(roles: Roles, model, pushed_model, summary: console.Summary) -> str:
    """Why no model was pushed, from the first step that said no."""
    if roles.pusher is None:
        return "this pipeline has no Pusher"
    from export_archive.components.tfx import spec
    reason = _custom(model, spec.NOT_PUBLISHED_PROPERTY)
    if reason or _custom(model, spec.PUBLISHED_PROPERTY, "int") == 0:
        return f"ModelExporter did not publish: {reason or 'no reason recorded'}"
    if summary.evaluator == "NOT blessed":
        return "the Evaluator did not bless the model"
    if summary.infra_validator == "NOT blessed":
        return "InfraValidator did not bless the model"
    if pushed_model is None:
        return f"{roles.pusher[0]} did not run in this run"
    return f"{roles.pusher[0]} ran and did not push (not blessed)"


def _has_model_server() -> bool:
    return shutil.which("tensorflow_model_server") is not None


def run(keras_version: str = "3", root: str = "runs", train_steps: int = 100,
        enable_cache: bool = True, infra_validate: bool = False,
        contract_baseline: bool = True, module_files: bool = False) -> Optional[str]:
    """Runs the pipeline in this process, printing nothing of its own; returns the
    pushed model directory, or None when this run pushed nothing."""
    select_keras(keras_version)
    paths = RunPaths.create(root, keras_version)
    tfx_pipeline = build_pipeline(paths, keras_version, train_steps, enable_cache,
                                  infra_validate, contract_baseline, module_files)
    run_local(tfx_pipeline)
    return collect_summary(paths, tfx_pipeline).pushed


@contextlib.contextmanager
def console_output(verbose: bool, log_path: str) -> Iterator[Tuple[IO[str], Optional[str]]]:
    """Yields (where our lines go, the log file or None).

    Quiet (the default): the known warnings are filtered and file descriptors 1
    and 2 go to `log_path`. Verbose: nothing is filtered or redirected.
    """
    if verbose:
        yield sys.stdout, None
        return
    console.install_warning_filters()
    with console.RedirectedOutput(log_path) as redirected:
        yield redirected.console, log_path


@contextlib.contextmanager
def tfx_logging(progress: console.ComponentProgress) -> Iterator[None]:
    """TFX's INFO lines to stderr (the log file when quiet), and to the progress hook.

    Restores the logging set-up on exit, so that main() can run inside another
    program (a test) without taking its handlers away.
    """
    root, absl_logger = logging.getLogger(), logging.getLogger("absl")
    saved = root.handlers[:], root.level, absl_logging.get_verbosity()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s] %(message)s"))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    absl_logging.set_verbosity(absl_logging.INFO)
    hook = console.LauncherLogHook(progress)
    absl_logger.addHandler(hook)
    try:
        yield
    finally:
        absl_logger.removeHandler(hook)
        root.handlers[:], level, verbosity = saved
        root.setLevel(level)
        absl_logging.set_verbosity(verbosity)


def run_local(tfx_pipeline) -> None:
    from tfx import v1 as tfx
    tfx.orchestration.LocalDagRunner().run(tfx_pipeline)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    select_keras(args.keras)
    paths = RunPaths.create(args.root, args.keras)
    started = time.monotonic()
    with console_output(args.verbose, paths.new_log_file()) as (out, log_file):
        print(f"{paths.name}: running under {os.path.dirname(paths.pipeline_root)}"
              + (f" (TFX, Beam and TensorFlow output: {log_file})" if log_file else ""),
              file=out, flush=True)
        progress = console.ComponentProgress(out, rewrite=out.isatty() and not args.verbose)
        try:
            with tfx_logging(progress):
                tfx_pipeline = build_pipeline(
                    paths, args.keras, args.train_steps, not args.no_cache,
                    args.infra_validate and _has_model_server(), not args.no_baseline,
                    args.module_files)
                progress.quiet_start = set(pipeline_roles(tfx_pipeline).resolvers)
                progress.name_width = max(len(c.id) for c in tfx_pipeline.components)
                run_local(tfx_pipeline)
                summary = collect_summary(paths, tfx_pipeline)
        except BaseException as error:  # pylint: disable=broad-except
            # The traceback goes to the log (stderr); the console gets one line.
            traceback.print_exc()
            failed = progress.failed()
            for line in console.render_failure(failed.node_id if failed else None, error,
                                               log_file, any_ran=bool(progress.runs)):
                print(line, file=out, flush=True)
            return 130 if isinstance(error, KeyboardInterrupt) else 1
        summary.log_file = log_file
        summary.seconds = time.monotonic() - started
        summary.counts = progress.counts()
        for line in console.render_summary(summary):
            print(line, file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
