"""Keys and types of the ModelExporter component, shared by component, executor and tests."""

from tfx import types
from tfx.types import component_spec, standard_artifacts

# Inputs. The constructor argument is `model` (like Pusher and InfraValidator), but
# the spec key is `trained_model`: TFX needs names unique across inputs and
# outputs, and the *output* is `model`, so `exporter.outputs['model']` reads the
# way every downstream TFX component expects.
TRAINED_MODEL_KEY = "trained_model"
SCHEMA_KEY = "schema"
TRANSFORM_GRAPH_KEY = "transform_graph"
EXAMPLES_KEY = "examples"
# The model clients are served today, whose serving contract the new export must
# keep. The constructor argument `baseline_model` takes a Model channel (e.g. a
# Resolver with LatestBlessedModelStrategy) or a PushedModel channel (Pusher's
# `pushed_model`, e.g. through LatestPushedModelStrategy); a ChannelParameter has
# one type, so each has its own key and the constructor routes by channel type.
BASELINE_MODEL_KEY = "baseline_model"
BASELINE_PUSHED_MODEL_KEY = "baseline_pushed_model"
# As for Pusher: a ModelBlessing (Evaluator's) that must say blessed, or nothing
# is published.
MODEL_BLESSING_KEY = "model_blessing"

# Outputs.
MODEL_KEY = "model"
REPORT_KEY = "report"

# Parameters.
EXPORT_CONFIG_KEY = "export_config"
MODULE_FILE_KEY = "module_file"     # names as udf_utils expects them
MODULE_PATH_KEY = "module_path"

# A factory in the export config written "user_module:attr" is looked up in the
# component's module_file / module_path, the TFX way (udf_utils.get_fn).
USER_MODULE = "user_module"

# Custom properties recorded on the output model.
ENDPOINTS_PROPERTY = "exported_endpoints"
SERVING_DEFAULT_PROPERTY = "serving_default"
FLAVOR_PROPERTY = "source_flavor"
# "passed", or "failed: <reasons>" when the check ran in mode "warn".
SERVING_CHECK_PROPERTY = "serving_check"
# The contract guard's one-line verdict: "contract compatible with baseline …",
# "contract breaking …" (on_breaking: warn), or "no baseline: contract not compared".
CONTRACT_PROPERTY = "contract"
# Like Pusher's `pushed`: 1 when Format-Serving was written, 0 when a blessing or
# the contract guard stopped the export; then NOT_PUBLISHED_PROPERTY says why.
# Downstream steps are gated on it with `component.published(exporter)`.
PUBLISHED_PROPERTY = "published"
NOT_PUBLISHED_PROPERTY = "not_published_reason"

REPORT_JSON, REPORT_MARKDOWN, REPORT_HTML = "report.json", "report.md", "report.html"


class ExportReport(types.Artifact):
    """What ModelExporter wrote: the verdict, endpoints with call examples, checks,
    contract diff, versions and config (report.json, report.md, report.html)."""
    # The KFP v2 / Vertex compiler makes a custom type's TYPE_NAME its schema title,
    # and the KFP and Vertex AI UIs render an artifact whose title is system.HTML
    # (or system.Markdown): so the report shows in the run's UI. TFX's KFP v2
    # container imports a custom type back from its title, which "system.HTML" is
    # not: REPORT_TITLE_TO_CLASS_PATH maps it, registered by
    # export_archive.components.tfx.kfp_v2_entrypoint (the container command).
    TYPE_NAME = "system.HTML"


# The class TFX's KFP v2 container must build for the report's schema title.
REPORT_TITLE_TO_CLASS_PATH = {ExportReport.TYPE_NAME: f"{__name__}.ExportReport"}


class ModelExporterSpec(component_spec.ComponentSpec):
    PARAMETERS = {
        EXPORT_CONFIG_KEY: component_spec.ExecutionParameter(type=str),
        MODULE_FILE_KEY: component_spec.ExecutionParameter(type=str, optional=True),
        MODULE_PATH_KEY: component_spec.ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {
        TRAINED_MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model),
        SCHEMA_KEY: component_spec.ChannelParameter(type=standard_artifacts.Schema,
                                                    optional=True),
        TRANSFORM_GRAPH_KEY: component_spec.ChannelParameter(
            type=standard_artifacts.TransformGraph, optional=True),
        EXAMPLES_KEY: component_spec.ChannelParameter(type=standard_artifacts.Examples,
                                                      optional=True),
        BASELINE_MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model,
                                                            optional=True),
        BASELINE_PUSHED_MODEL_KEY: component_spec.ChannelParameter(
            type=standard_artifacts.PushedModel, optional=True),
        MODEL_BLESSING_KEY: component_spec.ChannelParameter(
            type=standard_artifacts.ModelBlessing, optional=True),
    }
    OUTPUTS = {
        MODEL_KEY: component_spec.ChannelParameter(type=standard_artifacts.Model),
        REPORT_KEY: component_spec.ChannelParameter(type=ExportReport),
    }
