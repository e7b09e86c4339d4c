"""ModelExporter: the TFX component (a thin adapter over export_archive.export)."""

from typing import Any, Dict, Optional, Union

from tfx import types
from tfx.components.util import udf_utils
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import channel_utils, standard_artifacts

from export_archive.components.tfx import executor, spec
from export_archive.config import ExportConfig


class ModelExporter(base_beam_component.BaseBeamComponent):
    """Builds serving endpoints for a trained model and emits a pushable Model.

    Example::

        exporter = ModelExporter(
            model=trainer.outputs["model"],
            transform_graph=transform.outputs["transform_graph"],
            export_config={"endpoints": [
                {"name": "serving_default", "kind": "tf_example", "transform": True,
                 "exclude_features": ["species"]},
                {"name": "serve_features"}]})
        pusher = Pusher(model=exporter.outputs["model"], ...)

    The export config is validated here, so a bad config fails when the pipeline
    is defined rather than when it runs. The serving check runs by default
    (config ``"check": {"enabled": false}`` turns it off); with `examples`, its
    parity step covers the whole eval split as a Beam pipeline.
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
                 module_path: Optional[str] = None):
        config = ExportConfig.parse(export_config)
        _check_inputs_for(config, schema, transform_graph, module_file, module_path)
        component_spec = spec.ModelExporterSpec(
            **{spec.TRAINED_MODEL_KEY: model,
               spec.SCHEMA_KEY: schema,
               spec.TRANSFORM_GRAPH_KEY: transform_graph,
               spec.EXAMPLES_KEY: examples,
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


def _check_inputs_for(config, schema, transform_graph, module_file, module_path):
    """Constructor-time checks that need the inputs as well as the config."""
    from export_archive.config import ConfigError
    if module_file and module_path:
        raise ValueError("ModelExporter: give module_file or module_path, not both.")
    for i, endpoint in enumerate(config.endpoints):
        where = f"endpoints[{i}]"
        if endpoint.kind == "tf_example" and schema is None and transform_graph is None:
            raise ConfigError(f"{where}.kind", "a tf_example endpoint needs a feature spec",
                              "tf_example", "a `schema` or `transform_graph` input",
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
