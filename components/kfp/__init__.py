"""ModelExporter as a standalone KFP v2 component (plain KFP, no TFX runtime).

`component.model_exporter` is the component; `model_exporter_component.yaml` is
its compiled form, loadable with `kfp.components.load_component_from_file`. Its
`vertex_model` output feeds google-cloud-pipeline-components' `ModelUploadOp`;
`vertex` picks Vertex AI's prebuilt TensorFlow serving image for it.
Importing this package does not import kfp.
"""
