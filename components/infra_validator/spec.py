"""Keys of the InfraValidator variant, shared by component, executor and tests.

The variant keeps every key of TFX's InfraValidatorSpec (model, examples,
blessing, serving_spec, validation_spec, request_spec) and adds one execution
parameter, `local_process_config`: a JSON string, so it travels unchanged as a
TFX execution property, in KFP v2 / Vertex pipeline IR and on a command line.
"""

from tfx.types import component_spec, standard_component_specs

# TFX's keys, re-exported so callers need one import.
MODEL_KEY = standard_component_specs.MODEL_KEY
EXAMPLES_KEY = standard_component_specs.EXAMPLES_KEY
BLESSING_KEY = standard_component_specs.BLESSING_KEY
SERVING_SPEC_KEY = standard_component_specs.SERVING_SPEC_KEY
VALIDATION_SPEC_KEY = standard_component_specs.VALIDATION_SPEC_KEY
REQUEST_SPEC_KEY = standard_component_specs.REQUEST_SPEC_KEY

# The new parameter: a LocalProcessConfig as JSON. Absent: TFX's platforms
# (ServingSpec.local_docker / kubernetes) run exactly as in TFX.
LOCAL_PROCESS_CONFIG_KEY = "local_process_config"

# What TFX writes on the blessing (tfx/components/infra_validator/executor.py);
# Pusher reads BLESSED_PROPERTY (model_utils.is_infra_validated) and, with
# make_warmup, HAS_MODEL_PROPERTY and the stamped model.
BLESSED_PROPERTY = "blessed"
HAS_MODEL_PROPERTY = "has_model"
BLESSED_FILE = "INFRA_BLESSED"
NOT_BLESSED_FILE = "INFRA_NOT_BLESSED"

# What we add. TFX 1.16's InfraBlessing has no property for the reason of a
# failure (only `blessed`), so the variant records one: a short, actionable
# summary (each attempt's error and the tail of the model server log) as a
# string custom property, visible in MLMD and the KFP / Vertex UI, and the same
# text as a file next to TFX's INFRA_NOT_BLESSED marker.
FAILURE_PROPERTY = "infra_validation_failure"
FAILURE_FILE = "INFRA_VALIDATION_FAILURE.txt"
# Full stdout+stderr of each local model server run, one file per attempt,
# kept whether validation passed or not.
LOGS_DIR = "model_server_logs"
# The ServingSpec tag recorded when local_process_config is given and the spec
# names none: TFX validates once per tag/digest, and zero tags would mean zero
# validations, i.e. a blessing nothing checked.
LOCAL_PROCESS_TAG = "local-process"


class InfraValidatorSpec(standard_component_specs.InfraValidatorSpec):
    """TFX's InfraValidatorSpec plus `local_process_config`."""

    PARAMETERS = {
        **standard_component_specs.InfraValidatorSpec.PARAMETERS,
        LOCAL_PROCESS_CONFIG_KEY: component_spec.ExecutionParameter(type=str, optional=True),
    }
