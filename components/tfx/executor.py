"""ModelExporter executor: resolves artifacts to paths and calls the core.

Everything about models, endpoints and writing lives in `export_archive`; this
module only maps TFX artifacts and execution properties onto it.
"""

import json
import os
import sys
import types
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
from tfx import types as tfx_types
from tfx.components.util import model_utils, udf_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.utils import path_utils

from export_archive import check, contract, examples, parity_beam, publish, report, writer
from export_archive.components.tfx import spec
from export_archive.config import ExportConfig


class Executor(base_beam_executor.BaseBeamExecutor):
    """Exports the trained model into `<model.uri>/Format-Serving` and writes the report."""

    def Do(self, input_dict: Dict[str, List[tfx_types.Artifact]],
           output_dict: Dict[str, List[tfx_types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        config = ExportConfig.parse(exec_properties[spec.EXPORT_CONFIG_KEY])
        _register_user_module(config, exec_properties)

        output_model = artifact_utils.get_single_instance(output_dict[spec.MODEL_KEY])
        report_artifact = artifact_utils.get_single_instance(output_dict[spec.REPORT_KEY])
        trained = artifact_utils.get_single_instance(input_dict[spec.TRAINED_MODEL_KEY])
        unblessed = _not_blessed(input_dict)
        if unblessed:
            # As Pusher does with a failed blessing: no model is built or published.
            self._not_published(output_model, report_artifact, unblessed, config, trained.uri)
            return

        # Where Trainer, Evaluator and Pusher look: <uri>/Format-Serving.
        model_path = path_utils.serving_model_path(trained.uri)

        example_builder = None
        schema_uri = _optional_uri(input_dict, spec.SCHEMA_KEY)
        transform_uri = _optional_uri(input_dict, spec.TRANSFORM_GRAPH_KEY)
        if schema_uri or transform_uri:
            example_builder = examples.ExampleEndpointBuilder(
                schema_path=schema_uri, transform_graph_path=transform_uri,
                example_files=_example_files(input_dict))

        serving_dir = path_utils.serving_model_dir(output_model.uri)
        _remove_dead_writers_staging(output_model.uri, serving_dir)
        # The component checks by default ("check": {"enabled": false} opts out): a
        # failing check raises before Format-Serving exists, so nothing is published.
        run_check = config.check_dict.get("enabled", True)
        baseline_dir, no_baseline = _baseline_dir(input_dict)
        try:
            result = writer.export(model_path, config, serving_dir, overwrite=True,
                                   example_builder=example_builder, check=run_check,
                                   baseline=baseline_dir)
        except contract.BreakingChange as e:
            # Like a failed blessing, not a failed run: the export stopped before its
            # rename, so Format-Serving does not exist and the pushed model stays the
            # served one. The component succeeds, so MLMD keeps the verdict and the
            # report keeps the diff; steps gated on `published` are skipped.
            self._not_published(output_model, report_artifact,
                                f"contract guard: {e.diff.summary()}", config, trained.uri,
                                contract_json=e.diff.to_json())
            return
        if no_baseline:
            result.contract = {**contract.not_compared(), "summary": no_baseline}
        if run_check and example_builder is not None and example_builder.example_files:
            self._split_parity(result, config, model_path, schema_uri, transform_uri,
                               example_builder.example_files, output_model.uri)
        if result.check_passed is not None:
            failures = [f"{c['endpoint'] or '(model)'}: {c['check']}: {c['detail']}"
                        for c in result.checks if not c["passed"]]
            output_model.set_string_custom_property(
                spec.SERVING_CHECK_PROPERTY,
                "passed" if result.check_passed else "failed: " + " | ".join(failures))

        output_model.set_int_custom_property(spec.PUBLISHED_PROPERTY, 1)
        output_model.set_string_custom_property(
            spec.ENDPOINTS_PROPERTY, json.dumps(result.endpoint_names))
        output_model.set_string_custom_property(
            spec.SERVING_DEFAULT_PROPERTY, result.serving_default)
        output_model.set_string_custom_property(spec.FLAVOR_PROPERTY, result.flavor)
        output_model.set_string_custom_property(spec.CONTRACT_PROPERTY,
                                                result.contract["summary"])
        logging.log(logging.WARNING if result.contract.get("breaking") else logging.INFO,
                    "ModelExporter: %s", result.contract["summary"])

        report.write_report(result, report_artifact.uri, spec.REPORT_JSON,
                            spec.REPORT_MARKDOWN, spec.REPORT_HTML, config=config,
                            source_uri=trained.uri)
        logging.info("ModelExporter wrote %s with endpoints %s", serving_dir,
                     result.endpoint_names)

    @staticmethod
    def _not_published(output_model, report_artifact, reason: str, config: ExportConfig,
                       source_uri: str, contract_json: Optional[Dict[str, Any]] = None) -> None:
        """Records why nothing was published: custom properties, one log line, the report."""
        output_model.set_int_custom_property(spec.PUBLISHED_PROPERTY, 0)
        output_model.set_string_custom_property(spec.NOT_PUBLISHED_PROPERTY, reason)
        if contract_json is not None:
            output_model.set_string_custom_property(spec.CONTRACT_PROPERTY,
                                                    contract_json["summary"])
        logging.warning("ModelExporter: not published: %s", reason)
        report.write_not_published(reason, contract_json, report_artifact.uri,
                                   spec.REPORT_JSON, spec.REPORT_MARKDOWN, spec.REPORT_HTML,
                                   config=config, source_uri=source_uri)

    def _split_parity(self, result, config, model_path, schema_uri, transform_uri,
                      example_files, output_uri) -> None:
        """Parity over the whole examples split, as a Beam pipeline (DirectRunner here,
        Dataflow through the component's beam_pipeline_args).

        It runs on the published directory, which Dataflow workers can read on
        gs://; on failure in mode "fail" the directory is removed before the
        component fails, so the output is never published or left half-done.
        """
        job = parity_beam.ParityJob(
            export_dir=result.output_dir, model_path=model_path,
            config_json=config.to_json(), schema_path=schema_uri,
            transform_graph_path=transform_uri,
            rtol=config.check_dict.get("rtol", check.DEFAULT_RTOL),
            atol=config.check_dict.get("atol", check.DEFAULT_ATOL))
        rows = parity_beam.run(job, example_files,
                               os.path.join(self._get_tmp_dir(), "split_parity.jsonl"),
                               self._beam_pipeline_args)
        result.checks.extend(rows)
        failed = [r for r in rows if not r["passed"]]
        if failed:
            result.check_passed = False
            if config.check_dict.get("mode", "fail") == "fail":
                fileio.rmtree(result.output_dir)
                raise check.CheckFailed(check.CheckReport(result.checks))


def _example_files(input_dict) -> List[str]:
    """Record files of the `examples` artifact's eval split (else its first split)."""
    artifacts = input_dict.get(spec.EXAMPLES_KEY) or []
    if not artifacts:
        return []
    examples_artifact = artifacts[0]
    splits = artifact_utils.decode_split_names(examples_artifact.split_names)
    if not splits:
        return []
    split = "eval" if "eval" in splits else splits[0]
    split_dir = artifact_utils.get_split_uri([examples_artifact], split)
    return sorted(fileio.glob(f"{split_dir}/*"))


def _remove_dead_writers_staging(output_uri: str, serving_dir: str) -> None:
    """Staging left by killed executions of this component, in their own output dirs.

    TFX gives each execution a new output directory and never returns to a killed
    one, so the core's clean-up (beside the path it publishes to) would never see
    what a SIGKILLed ModelExporter left. Its siblings are those directories; a
    staging directory whose writer is alive (a concurrent run) is left alone.
    """
    if "://" in output_uri:
        return  # object stores: writes are not staged by rename there
    executions_dir = os.path.dirname(os.path.normpath(output_uri))
    base = os.path.basename(serving_dir)
    for sibling in sorted(fileio.glob(os.path.join(executions_dir, "*"))):
        publish.remove_stale_staging(sibling, base)


def _not_blessed(input_dict) -> Optional[str]:
    """Why the `model_blessing` input forbids publishing, or None (blessed, or no input)."""
    blessings = input_dict.get(spec.MODEL_BLESSING_KEY) or []
    if not blessings:
        return None
    blessing = artifact_utils.get_single_instance(blessings)
    if model_utils.is_model_blessed(blessing):
        return None
    return (f"model_blessing: ModelBlessing {blessing.id} at {blessing.uri} is not blessed "
            "(its `blessed` property is not 1)")


def _baseline_dir(input_dict) -> Tuple[Optional[str], Optional[str]]:
    """(the baseline SavedModel directory, None) or (None, why there is none)."""
    models = input_dict.get(spec.BASELINE_MODEL_KEY) or []
    if models:
        # A Model artifact keeps its SavedModel where Pusher reads it.
        return path_utils.serving_model_path(models[0].uri), None
    pushed = input_dict.get(spec.BASELINE_PUSHED_MODEL_KEY) or []
    if pushed:
        artifact = pushed[0]
        if (artifact.has_custom_property("pushed")
                and artifact.get_int_custom_property("pushed") != 1):
            # Pusher found no blessing and pushed nothing; the artifact is empty.
            return None, (f"{contract.NO_BASELINE} (PushedModel {artifact.id} was not "
                          "pushed; resolve it with baseline.LatestPushedModelStrategy)")
        # Pusher copies the pushed SavedModel into its artifact's uri "for archiving".
        return artifact.uri, None
    return None, contract.NO_BASELINE


def _optional_uri(input_dict, key) -> Optional[str]:
    artifacts = input_dict.get(key) or []
    return artifact_utils.get_single_uri(artifacts) if artifacts else None


def _register_user_module(config: ExportConfig, exec_properties: Dict[str, Any]) -> None:
    """Makes `user_module:attr` factories resolvable, loading them the TFX way.

    udf_utils.get_fn understands both a raw module_file and the packaged
    module_path TFX substitutes for it, so the core only ever sees an
    importable module named `user_module`.
    """
    names = [e.factory[1] for e in config.endpoints
             if e.factory and e.factory[0] == spec.USER_MODULE]
    if not names:
        return
    module = types.ModuleType(spec.USER_MODULE)
    for name in names:
        setattr(module, name, udf_utils.get_fn(exec_properties, name))
    sys.modules[spec.USER_MODULE] = module
