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
    # Every range below is one a lane of `make test` tests at both ends (README,
    # *Tested stack*): the pinned TFX lane (Python 3.10, TF 2.16, Keras 3.12,
    # tf_keras 2.16, TFX 1.16; constraints.txt) and the current lane (Python 3.12,
    # TF 2.21, Keras 3.15, tf_keras 2.21, TFT 1.21; constraints-current.txt).
    python_requires=">=3.10,<3.13",
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
    package_data={"export_archive": ["schema/*.json", "templates/*.j2", "op_registries/*.json"],
                  "export_archive.components.kfp": ["*.yaml"],
                  "export_archive.pipelines": ["data/penguins/*.csv"]},
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.12,<3.16",
        "tf-keras>=2.16,<2.22",
        "absl-py",
        # CRC32C of checkpoint tensors read in slices (checkpoint_weights.py), as
        # TensorFlow's own reader checks them; google-cloud-storage's checksum library.
        "google-crc32c>=1.9,<2",
        "jinja2>=3",      # the export report's templates (report.py)
        "jsonschema>=4",  # the config's JSON Schema is its one source of truth
    ],
    extras_require={
        # What the CLI, the Python API and the KFP step use beyond TF and Keras:
        # Transform graphs and Beam parity (no TFX orchestration), TF Serving's
        # protos, the KFP component and its Vertex output type.
        # <2.20: tfx-bsl 1.21 (TFT 1.21, TFX 1.21) requires tensorflow-serving-api
        # 2.19.x even beside TF 2.21, so 2.19 is the newest any lane can test.
        "serving": ["tensorflow-serving-api>=2.16,<2.20"],
        "transform": ["tensorflow-transform>=1.16,<1.22", "tfx-bsl>=1.16,<1.22",
                      "apache-beam[gcp]>=2.60,<3"],
        "kfp": ["kfp>=2.5,<2.18",
                # The vertex_model output type (ModelUploadOp's input). 2.3.0 is the one
                # release whose kfp range admits kfp 2.5.0 (tfx[kfp] 1.16's); the
                # current lane takes the newest release for its kfp.
                "google-cloud-pipeline-components>=2.3,<3"],
        # The TFX component, InfraValidator and the pipelines. TFX 1.17-1.21 need
        # TF 2.17-2.21 and their ml-metadata/TFDV wheels need glibc >= 2.38.
        # kfp named here too: TFX 1.21's own `kfp` extra installs kfp only below
        # Python 3.12.
        "tfx": ["tfx[kfp]>=1.16,<1.22", "apache-beam[gcp]>=2.60,<3",
                "tensorflow-serving-api>=2.16,<2.20", "kfp>=2.5,<2.18",
                "google-cloud-pipeline-components>=2.3,<3"],
        "test": ["pytest>=7", "hypothesis>=6", "psutil>=5",
                 # registers ops outside core TF: the serving check must flag them
                 "tensorflow-text>=2.16,<2.22"],
        # TFX example Trainer modules of the zoo (tests/zoo/test_tfx_trainers.py):
        # penguin_utils_tfdf_experimental and penguin_utils_cloud_tuner import them.
        # Pinned lane only: TF-DF 1.9 is built against TF 2.16.
        "test-tfx": ["tensorflow-decision-forests>=1.9,<1.10", "tensorflow-cloud>=0.1.16"],
    },
    entry_points={"console_scripts": ["export-archive=export_archive.cli:main"]},
)
