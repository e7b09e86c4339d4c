"""The project's pipeline with InfraValidator (local process) between ModelExporter and Pusher.

A thin call to `pipelines.pipeline.create_pipeline(infra_validation=...)`:
InfraValidator → Pusher(infra_blessing=...), which pushes InfraValidator's
stamped model (the export plus a warmup file of the requests it sent) and only
if the model was blessed.
"""

from typing import Any, Dict, List, Optional

from tfx import v1 as tfx

from export_archive.pipelines import pipeline as base_pipeline


def create_pipeline(pipeline_name: str, pipeline_root: str, serving_model_dir: str,
                    signature_names: Optional[List[str]] = None,
                    local_process_config: Optional[Dict[str, Any]] = None,
                    max_loading_time_seconds: int = 300,
                    **kwargs) -> tfx.dsl.Pipeline:
    """`kwargs` go to `create_pipeline` (export_config, train_steps, metadata, ...).

    Evaluator is off unless asked for: these tests are about InfraValidator's
    blessing, which must stop Pusher on its own."""
    kwargs.setdefault("evaluate", False)
    return base_pipeline.create_pipeline(
        pipeline_name, pipeline_root, serving_model_dir,
        infra_validation=local_process_config or {},
        infra_signature_names=signature_names,
        infra_max_loading_seconds=max_loading_time_seconds, **kwargs)
