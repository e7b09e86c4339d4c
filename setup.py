"""tfx-export-archive: Keras models to servable SavedModels for TFX, KFP and Vertex AI.

The tested stack is pinned in constraints.txt (Python 3.10, TFX 1.16); install with
``pip install -c constraints.txt -e '.[tfx,test]'`` (scripts/setup.sh does this).
"""

from setuptools import setup

setup(
    name="tfx-export-archive",
    version="0.1.0",
    description=("A TFX component, KFP step and CLI that turns a trained Keras model into "
                 "a checked, servable SavedModel through a declarative Keras ExportArchive."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9,<3.12",
    # components/ and pipelines/ live at the top level of the repo but install as
    # subpackages, so a KFP/Vertex container can import the executor by class path.
    package_dir={
        "export_archive": "src/export_archive",
        "export_archive.components": "components",
        "export_archive.pipelines": "pipelines",
    },
    packages=[
        "export_archive",
        "export_archive.components",
        "export_archive.components.tfx",
        "export_archive.components.kfp",
        "export_archive.components.infra_validator",
        "export_archive.pipelines",
        "export_archive.pipelines.modules",
        "export_archive.pipelines.data",
    ],
    package_data={"export_archive": ["schema/*.json", "templates/*.j2"],
                  "export_archive.components.kfp": ["*.yaml"],
                  "export_archive.pipelines": ["data/penguins/*.csv"]},
    install_requires=[
        "tensorflow>=2.15,<2.17",
        "keras>=3.3",
        "tf-keras>=2.15,<2.17",
        "absl-py",
        "jinja2>=3",   # the export report's templates (report.py)
        "numpy<2",
    ],
    extras_require={
        "tfx": ["tfx[kfp]>=1.15,<1.17", "apache-beam[gcp]>=2.53",
                "tensorflow-serving-api>=2.15,<2.17",
                # The KFP component's vertex_model output type (ModelUploadOp's input).
                # 2.3.0 is the one release whose kfp range (<3) admits kfp 2.5.0, which
                # tfx[kfp] 1.16 resolves to; 2.4-2.8 need kfp<=2.4, 2.9+ kfp>=2.6.
                "google-cloud-pipeline-components>=2.3,<3"],
        "test": ["pytest>=7", "hypothesis>=6", "jsonschema>=4", "psutil>=5",
                 # registers ops outside core TF: the serving check must flag them
                 "tensorflow-text>=2.15,<2.17",
                 # TFX example Trainer modules of the zoo (tests/zoo/test_tfx_trainers.py):
                 # penguin_utils_tfdf_experimental and penguin_utils_cloud_tuner import them
                 "tensorflow-decision-forests>=1.9,<1.10", "tensorflow-cloud>=0.1.16"],
    },
    entry_points={"console_scripts": ["export-archive=export_archive.cli:main"]},
)
