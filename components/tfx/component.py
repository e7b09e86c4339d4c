"""ModelExporter: the TFX component (a thin adapter over export_archive.export)."""

from typing import Any, Dict, Optional, Union

from tfx import types
from tfx.components.util import udf_utils
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import channel_utils, standard_artifacts

from export_archive.components.tfx import executor, spec
from export_archive.config import SPEC_KINDS, ConfigError, ExportConfig


class ModelExporter(base_beam_component.BaseBeamComponent):
    """Builds serving endpoints for a trained model and emits a pushable Model.

    Example::

        exporter = ModelExporter(
            model=trainer.outputs["model"],
            transform_graph=transform.outputs["transform_graph"],
            export_config={"endpoints": [
                {"name": "serving_default", "kind": "tf_example", "transform": True,
                 "exclude_features": ["species"]},
                {"name": "serve_raw", "kind": "raw_features", "transform": True,
                 "exclude_features": ["species"]}]})
        pusher = Pusher(model=exporter.outputs["model"], ...)

    The export config is validated here, so a bad config fails when the pipeline
    is defined rather than when it runs. The serving check runs by default
    (config ``"check": {"enabled": false}`` turns it off); with `examples`, its
    parity step covers the whole eval split as a Beam pipeline.

    `baseline_model` (optional) is the model clients are served today: a Model
    channel (a Resolver with LatestBlessedModelStrategy) or a PushedModel channel
    (Pusher's output through `latest_pushed_model()`). A new serving contract
    that would break its clients is not published (config ``contract``;
    docs/contract.md). Without one, or when
    it resolves to nothing (the first run), the report says "no baseline:
    contract not compared".

    `model_blessing` (optional) is a ModelBlessing, e.g. Evaluator's
    ``outputs["blessing"]``. As with Pusher, a model that is not blessed is not
    exported at all.

    Not publishing (not blessed, or a breaking contract change) is a verdict,
    not a failure: the component succeeds, its output Model has no
    Format-Serving, its custom property ``published`` is 0 and
    ``not_published_reason`` says why, and the report shows it (with the
    contract diff). Steps that read the model go under ``published(exporter)``,
    as TFX gates on a blessing::

        with tfx.dsl.Cond(published(exporter)):
            evaluator = Evaluator(model=exporter.outputs["model"], ...)
            pusher = Pusher(model=exporter.outputs["model"], ...)

    (For KubeflowV2DagRunner, see docs/evaluation.md: TFX 1.16 miscompiles
    that Cond around an Evaluator with a LatestBlessedModelStrategy baseline.)
    """

    SPEC_CLASS = spec.ModelExporterSpec
    # A Beam executor: the split-wide parity check runs on beam_pipeline_args
    # (DirectRunner by default, Dataflow with the usual flags).
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self,
                 model: types.BaseChannel,
                 export_config: Union[ExportConfig, Dict[str, Any], str],
                 schema: Optional[types.BaseChannel] = None,
                 transform_graph: Optional[types.BaseChannel] = None,
                 examples: Optional[types.BaseChannel] = None,
                 module_file: Optional[str] = None,
                 module_path: Optional[str] = None,
                 baseline_model: Optional[types.BaseChannel] = None,
                 model_blessing: Optional[types.BaseChannel] = None):
        config = ExportConfig.parse(export_config)
        _check_model_channel(model)
        _check_inputs_for(config, schema, transform_graph, module_file, module_path)
        component_spec = spec.ModelExporterSpec(
            **{spec.TRAINED_MODEL_KEY: model,
               spec.SCHEMA_KEY: schema,
               spec.TRANSFORM_GRAPH_KEY: transform_graph,
               spec.EXAMPLES_KEY: examples,
               **_baseline_inputs(baseline_model),
               spec.MODEL_BLESSING_KEY: _blessing_input(model_blessing),
               spec.EXPORT_CONFIG_KEY: config.to_json(),
               spec.MODULE_FILE_KEY: module_file,
               spec.MODULE_PATH_KEY: module_path,
               spec.MODEL_KEY: channel_utils.as_channel([standard_artifacts.Model()]),
               spec.REPORT_KEY: channel_utils.as_channel([spec.ExportReport()])})
        super().__init__(spec=component_spec)
        if module_file and udf_utils.should_package_user_modules():
            # As Trainer does: the module file is packaged and module_path points to it.
            udf_utils.add_user_module_dependency(self, spec.MODULE_FILE_KEY,
                                                 spec.MODULE_PATH_KEY)


def published(exporter: ModelExporter):
    """The predicate for `tfx.dsl.Cond`: true when the exporter published a model."""
    return exporter.outputs[spec.MODEL_KEY].future()[0].custom_property(
        spec.PUBLISHED_PROPERTY) == 1


def _blessing_input(channel: Optional[types.BaseChannel]) -> Optional[types.BaseChannel]:
    if channel is not None and getattr(channel, "type_name", None) != \
            standard_artifacts.ModelBlessing.TYPE_NAME:
        raise TypeError(
            "ModelExporter(model_blessing=...) takes a ModelBlessing channel, such as "
            f"evaluator.outputs['blessing']; got {getattr(channel, 'type_name', channel)!r}.")
    return channel


def _check_model_channel(model) -> None:
    """TFX's own check names the spec key (`trained_model`); users pass `model=`."""
    got = getattr(model, "type", None)
    if not (isinstance(model, types.BaseChannel) and got is not None
            and issubclass(got, standard_artifacts.Model)):
        what = getattr(got, "TYPE_NAME", None) or type(model).__name__
        raise TypeError(f"ModelExporter(model=...) takes a Model channel, such as "
                        f"trainer.outputs['model']; got {what}.")


def _baseline_inputs(channel: Optional[types.BaseChannel]) -> Dict[str, Any]:
    """Routes the baseline to the spec key of its artifact type (see spec.py)."""
    if channel is None:
        return {}
    type_name = getattr(channel, "type_name", None)
    if type_name == standard_artifacts.Model.TYPE_NAME:
        return {spec.BASELINE_MODEL_KEY: channel}
    if type_name == standard_artifacts.PushedModel.TYPE_NAME:
        return {spec.BASELINE_PUSHED_MODEL_KEY: channel}
    raise TypeError(
        f"ModelExporter: baseline_model must be a channel of Model or PushedModel "
        f"artifacts; received {channel!r} (type {type_name}). Pass e.g. "
        "baseline.latest_pushed_model().outputs['model'] or a Resolver with "
        "LatestBlessedModelStrategy's outputs['model'].")


def _check_inputs_for(config, schema, transform_graph, module_file, module_path):
    """Constructor-time checks that need the inputs as well as the config."""
    if module_file and module_path:
        raise ValueError("ModelExporter: give module_file or module_path, not both.")
    for i, endpoint in enumerate(config.endpoints):
        where = f"endpoints[{i}]"
        if endpoint.kind in SPEC_KINDS and schema is None and transform_graph is None:
            raise ConfigError(f"{where}.kind", f"a {endpoint.kind} endpoint needs a feature "
                              "spec", endpoint.kind, "a `schema` or `transform_graph` input",
                              "pass schema=schema_gen.outputs['schema'] or "
                              "transform_graph=transform.outputs['transform_graph']")
        if endpoint.transform and transform_graph is None:
            raise ConfigError(f"{where}.transform", "transform: true needs the Transform "
                              "graph", True, "a `transform_graph` input",
                              "pass transform_graph=transform.outputs['transform_graph']")
        factory = endpoint.factory
        if factory and factory[0] == spec.USER_MODULE and not (module_file or module_path):
            raise ConfigError(f"{where}.fn", f"{spec.USER_MODULE}:… names the component's "
                              "module, but none was given", endpoint.fn,
                              "module_file= or module_path=",
                              "pass module_file to ModelExporter")
