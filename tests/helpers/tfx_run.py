"""Drive ModelExporter's real executor over real artifact directories, laid out as
Trainer leaves them (used by the executor tests and the model zoo)."""

import json
import os

from tfx.types import standard_artifacts

from export_archive.components.tfx import spec
from export_archive.components.tfx.executor import Executor


def artifact(cls, uri):
    a = cls()
    a.uri = str(uri)
    os.makedirs(a.uri, exist_ok=True)   # the launcher creates output dirs before Do()
    return a


class Run:
    """One executor run: trainer artifact in, exported model and report out."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.trained = artifact(standard_artifacts.Model, tmp_path / "Trainer" / "model" / "1")
        self.model = artifact(standard_artifacts.Model, tmp_path / "ModelExporter" / "model" / "2")
        self.report = artifact(spec.ExportReport, tmp_path / "ModelExporter" / "report" / "2")
        self.extra_inputs = {}

    @property
    def trainer_serving_dir(self):
        return os.path.join(self.trained.uri, "Format-Serving")

    @property
    def serving_dir(self):
        return os.path.join(self.model.uri, "Format-Serving")

    def do(self, config, module_file=None, module_path=None, executor=None):
        input_dict = {spec.TRAINED_MODEL_KEY: [self.trained], **self.extra_inputs}
        output_dict = {spec.MODEL_KEY: [self.model], spec.REPORT_KEY: [self.report]}
        exec_properties = {spec.EXPORT_CONFIG_KEY: json.dumps(config),
                           spec.MODULE_FILE_KEY: module_file,
                           spec.MODULE_PATH_KEY: module_path}
        (executor or Executor()).Do(input_dict, output_dict, exec_properties)

    def add_input(self, key, cls, uri):
        self.extra_inputs[key] = [artifact(cls, uri)]
        return self.extra_inputs[key][0].uri
