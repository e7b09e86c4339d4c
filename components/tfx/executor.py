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

from export_archive import contract, publish
from export_archive import step as export_step
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
        serving_dir = path_utils.serving_model_dir(output_model.uri)
        _remove_dead_writers_staging(output_model.uri, serving_dir)
        baseline_dir, no_baseline = _baseline_dir(input_dict)
        # The component checks by default ("check": {"enabled": false} opts out): a
        # failing check raises before Format-Serving exists, so nothing is published.
        outcome = export_step.run(export_step.ExportStep(
            # Where Trainer, Evaluator and Pusher look: <uri>/Format-Serving.
            model=path_utils.serving_model_path(trained.uri), config=config,
            output_dir=serving_dir,
            schema_path=_optional_uri(input_dict, spec.SCHEMA_KEY),
            transform_graph_path=_optional_uri(input_dict, spec.TRANSFORM_GRAPH_KEY),
            example_files=_example_files(input_dict), blessing=_blessing(input_dict),
            baseline_dir=baseline_dir, no_baseline=no_baseline,
            check=config.check_dict.get("enabled", True),
            beam_pipeline_args=self._beam_pipeline_args,
            # TFX's per-execution tmp dir; without a context (a bare Do()), a temp dir.
            scratch_dir=self._get_tmp_dir() if self._context else None,
            source_uri=trained.uri))
        # The step's names are this component's custom property names (spec.py's
        # PUBLISHED_PROPERTY, NOT_PUBLISHED_PROPERTY, SERVING_CHECK_PROPERTY, CONTRACT_PROPERTY).
        for key, value in outcome.properties().items():
            if isinstance(value, int):
                output_model.set_int_custom_property(key, value)
            else:
                output_model.set_string_custom_property(key, value)
        if outcome.published:
            result = outcome.result
            output_model.set_string_custom_property(
                spec.ENDPOINTS_PROPERTY, json.dumps(result.endpoint_names))
            output_model.set_string_custom_property(
                spec.SERVING_DEFAULT_PROPERTY, result.serving_default)
            output_model.set_string_custom_property(spec.FLAVOR_PROPERTY, result.flavor)
            logging.info("ModelExporter wrote %s with endpoints %s", serving_dir,
                         result.endpoint_names)
        outcome.write_report(report_artifact.uri, spec.REPORT_JSON, spec.REPORT_MARKDOWN,
                             spec.REPORT_HTML)


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


def _blessing(input_dict) -> Optional[export_step.Blessing]:
    """The `model_blessing` input as the step's Blessing, or None (no such input)."""
    blessings = input_dict.get(spec.MODEL_BLESSING_KEY) or []
    if not blessings:
        return None
    blessing = artifact_utils.get_single_instance(blessings)
    return export_step.Blessing(
        blessed=bool(model_utils.is_model_blessed(blessing)),
        description=f"ModelBlessing {blessing.id} at {blessing.uri}")


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
    """Makes `user_module:attr` factories and `track` entries resolvable, loading them
    the TFX way.

    udf_utils.get_fn understands both a raw module_file and the packaged
    module_path TFX substitutes for it, so the core only ever sees an
    importable module named `user_module`.
    """
    names = [e.factory[1] for e in config.endpoints
             if e.factory and e.factory[0] == spec.USER_MODULE]
    # `track` entries may name the module's objects or builders too.
    names += [entry.split(":", 1)[1] for entry in config.track
              if entry.startswith(spec.USER_MODULE + ":")]
    names = list(dict.fromkeys(names))
    if not names:
        return
    module = types.ModuleType(spec.USER_MODULE)
    for name in names:
        setattr(module, name, udf_utils.get_fn(exec_properties, name))
    sys.modules[spec.USER_MODULE] = module
