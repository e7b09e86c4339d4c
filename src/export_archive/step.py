"""The one export step behind every front door: gates, export, contract, split parity.

The TFX executor, the KFP component, the CLI and `export_archive.export` differ only
in how they find their inputs (artifacts, paths, flags) and where they put the
outcome (custom properties, artifact metadata, stdout). What happens in between is
here, once:

1. **Blessing gate.** A blessing that is not blessed publishes nothing, as Pusher
   does: no model is loaded, the outcome says why.
2. **Export** (`writer.export`): endpoints built, written to a staging directory,
   the serving check and the contract guard run on it before it is published.
3. **Contract guard.** A breaking change in mode ``on_breaking: fail`` is not a
   failed run: nothing is published and the outcome keeps the diff, so the
   pipeline's gated steps (Pusher, ModelUploadOp) are skipped.
4. **Split parity** over a whole examples split, as a Beam pipeline (DirectRunner
   here, Dataflow through ``beam_pipeline_args``), when examples are given and the
   check runs. On a mismatch in mode "fail" the published directory is removed
   before `check.CheckFailed` is raised, so nothing half-checked stays.

Example (a TFX-less KFP step does exactly this)::

    from export_archive import step
    outcome = step.run(step.ExportStep(model="trainer/Format-Serving",
                                       config={"endpoints": [{"name": "serve"}]},
                                       output_dir="exported/"))
    assert outcome.published and outcome.result.endpoint_names == ["serve"]
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Union

import tensorflow as tf
from absl import logging

from export_archive import (check, contract, contract_process, examples, memory, publish, report,
                            writer)
from export_archive.config import ExportConfig
from export_archive.rows import failure_lines

# The outcome's names, the same for TFX custom properties and KFP artifact metadata.
PUBLISHED = "published"                    # 1 when the SavedModel was written, else 0
NOT_PUBLISHED_REASON = "not_published_reason"
SERVING_CHECK = "serving_check"            # "passed", or "failed: <reasons>" (mode warn)
CONTRACT = "contract"                      # the contract guard's one-line verdict


@dataclasses.dataclass
class Blessing:
    """A model blessing, resolved by the front door (a TFX ModelBlessing artifact, a
    KFP artifact's metadata): whether it blesses, what it is and how it said no, for
    the reason."""
    blessed: bool
    description: str
    detail: str = "its `blessed` property is not 1"


def blessing_of_artifact(uri: str, properties: Dict[str, Any], path: Optional[str] = None,
                         name: str = "model_blessing") -> Blessing:
    """The blessing a TFX Evaluator (or InfraValidator) artifact holds: its `blessed`
    property (MLMD custom property, or the artifact's metadata once KFP carries it),
    else the BLESSED / NOT_BLESSED file the Evaluator writes into the artifact
    (INFRA_BLESSED / INFRA_NOT_BLESSED: InfraValidator's).

    Raises ValueError when the artifact says neither, naming the input and the fix:
    an artifact that cannot say yes must not pass as a yes.
    """
    path = path or uri
    value = properties.get("blessed")
    if value is not None:
        try:
            return Blessing(int(value) == 1, f"the artifact at {uri}")
        except (TypeError, ValueError):
            raise ValueError(
                f"{name}: the artifact at {uri} has `blessed` = {value!r}. allowed: 1 "
                "(blessed) or 0. fix: connect the Evaluator's `blessing` output.") from None
    # Evaluator's files; InfraValidator writes INFRA_-prefixed ones.
    for marker, blessed in (("BLESSED", True), ("NOT_BLESSED", False),
                            ("INFRA_BLESSED", True), ("INFRA_NOT_BLESSED", False)):
        if tf.io.gfile.exists(os.path.join(path, marker)):
            return Blessing(blessed, f"the artifact at {uri}",
                            detail=f"it holds a {marker} file")
    raise ValueError(
        f"{name}: the artifact at {uri} says neither blessed nor not blessed: it has no "
        "`blessed` metadata and no BLESSED or NOT_BLESSED file. fix: connect the "
        "Evaluator's `blessing` output (or InfraValidator's) to model_blessing.")


@dataclasses.dataclass
class ExportStep:
    """The resolved inputs of one export."""
    model: Any                 # a path (as the components give it) or a model object
    config: Union[ExportConfig, dict, str]
    output_dir: str
    schema_path: Optional[str] = None
    transform_graph_path: Optional[str] = None
    example_files: Sequence[str] = ()
    # Or a ready `examples.ExampleEndpointBuilder` (the Python API's argument).
    example_builder: Optional[Any] = None
    blessing: Optional[Blessing] = None
    # The model clients are served today; `no_baseline` says why there is none
    # (shown instead of the generic "no baseline" summary).
    baseline_dir: Optional[str] = None
    no_baseline: Optional[str] = None
    # None: as the config says (a "check" section); the components pass True.
    check: Optional[bool] = True
    split_parity: bool = True
    beam_pipeline_args: Sequence[str] = ()
    scratch_dir: Optional[str] = None       # for the split parity's rows
    overwrite: bool = True
    record: Optional[publish.PublishRecord] = None
    source_uri: Optional[str] = None        # where the model came from, for the report


@dataclasses.dataclass
class Outcome:
    """What one export step did."""
    config: ExportConfig
    published: bool
    not_published_reason: Optional[str] = None
    result: Optional[writer.ExportResult] = None
    contract: Dict[str, Any] = dataclasses.field(default_factory=contract.not_compared)
    source_uri: Optional[str] = None
    # What stopped a contract-guarded export (`contract.BreakingChange`), for callers
    # that report it in full (the CLI) or raise it (the Python API).
    stopped_by: Optional[Exception] = None

    @property
    def compared(self) -> bool:
        """Whether the contract guard compared this model with a baseline."""
        return self.contract.get("status") != contract.STATUS_NOT_COMPARED

    @property
    def serving_check(self) -> Optional[str]:
        """"passed", "failed: ..." (mode warn), or None when no check ran."""
        if self.result is None or self.result.check_passed is None:
            return None
        if self.result.check_passed:
            return "passed"
        return "failed: " + " | ".join(failure_lines(self.result.checks))

    def properties(self) -> Dict[str, Union[int, str]]:
        """The outcome as flat properties (TFX custom properties, KFP metadata)."""
        props: Dict[str, Union[int, str]] = {PUBLISHED: int(self.published)}
        if self.published or self.compared:   # a blessing stop compares nothing
            props[CONTRACT] = self.contract["summary"]
        if not self.published:
            props[NOT_PUBLISHED_REASON] = self.not_published_reason or ""
        if self.serving_check is not None:
            props[SERVING_CHECK] = self.serving_check
        return props

    def write_report(self, directory: str, json_name: str = "report.json",
                     markdown_name: str = "report.md", html_name: str = "report.html"):
        """report.json, report.md and report.html of this outcome into `directory`."""
        if self.published:
            report.write_report(self.result, directory, json_name, markdown_name, html_name,
                                config=self.config, source_uri=self.source_uri)
        else:
            report.write_not_published(
                self.not_published_reason, self.contract if self.compared else None,
                directory, json_name,
                markdown_name, html_name, config=self.config, source_uri=self.source_uri)

    def report_texts(self) -> Dict[str, str]:
        """{"md": ..., "html": ...}: the report rendered once, for a front door that
        stores the files itself (the KFP step's Markdown and HTML outputs)."""
        directory = tempfile.mkdtemp(prefix="export-report-")
        try:
            self.write_report(directory)
            texts = {}
            for kind in ("md", "html"):
                with open(os.path.join(directory, f"report.{kind}"), encoding="utf-8") as f:
                    texts[kind] = f.read()
            return texts
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def run(step: ExportStep) -> Outcome:
    """Runs the export step (module docstring); raises `check.CheckFailed` when the
    check fails in mode "fail", and the core's input errors as they are."""
    config = ExportConfig.parse(step.config)
    if step.blessing is not None and not step.blessing.blessed:
        reason = (f"model_blessing: {step.blessing.description} is not blessed "
                  f"({step.blessing.detail})")
        return _not_published(config, reason, step)

    example_builder = step.example_builder
    if example_builder is None and (step.schema_path or step.transform_graph_path):
        example_builder = examples.ExampleEndpointBuilder(
            schema_path=step.schema_path, transform_graph_path=step.transform_graph_path,
            example_files=list(step.example_files) or None)
    try:
        result = writer.export(step.model, config, step.output_dir,
                               overwrite=step.overwrite, example_builder=example_builder,
                               check=step.check, baseline=step.baseline_dir,
                               record=step.record,
                               preflight=_parity_preflight(config, step, example_builder))
    except contract.BreakingChange as e:
        # The export stopped before its rename: the served model stays the served one.
        outcome = _not_published(config, f"contract guard: {e.diff.summary()}", step,
                                 contract_json=e.diff.to_json())
        outcome.stopped_by = e
        return outcome
    if step.baseline_dir is None and step.no_baseline:
        result.contract = {**contract.not_compared(), "summary": step.no_baseline}
    outcome = Outcome(config, True, result=result, contract=result.contract,
                      source_uri=step.source_uri)
    if result.check_passed is not None and _split_parity_wanted(step, example_builder):
        _split_parity(outcome, step, example_builder.example_files)
    logging.log(logging.WARNING if result.contract.get("breaking") else logging.INFO,
                "export: %s", result.contract["summary"])
    return outcome


def _split_parity_wanted(step: ExportStep, example_builder) -> bool:
    # Beam workers load the model from its path: no split parity for a model object.
    return bool(step.split_parity and example_builder is not None
                and example_builder.example_files
                and isinstance(step.model, (str, os.PathLike)))


def _parity_preflight(config: ExportConfig, step: ExportStep, example_builder):
    """What refuses, before the export is written, a split parity whose local Beam
    workers this machine cannot hold; None when no split parity will run."""
    if not (_split_parity_wanted(step, example_builder)
            and contract_process.check_wanted(config, step.check)):
        return None
    from export_archive import parity_beam   # imports Apache Beam: only when split parity runs
    workers = parity_beam.local_workers(list(step.beam_pipeline_args))
    if workers is None:
        return None
    return lambda weight_bytes: memory.require_for_parity(weight_bytes, workers)


def _not_published(config: ExportConfig, reason: str, step: ExportStep,
                   contract_json: Optional[Dict[str, Any]] = None) -> Outcome:
    logging.warning("export: not published: %s", reason)
    return Outcome(config, False, not_published_reason=reason,
                   contract=contract_json or contract.not_compared(),
                   source_uri=step.source_uri)


def _split_parity(outcome: Outcome, step: ExportStep, example_files: List[str]) -> None:
    """Parity over the whole split, on the published directory (which Dataflow
    workers can read on gs://)."""
    from export_archive import parity_beam   # imports Apache Beam: only when split parity runs
    config, result = outcome.config, outcome.result
    job = parity_beam.ParityJob(
        export_dir=result.output_dir, model_path=os.fspath(step.model),
        config_json=config.to_json(), schema_path=step.schema_path,
        transform_graph_path=step.transform_graph_path,
        rtol=config.check_dict.get("rtol", check.DEFAULT_RTOL),
        atol=config.check_dict.get("atol", check.DEFAULT_ATOL))
    scratch = step.scratch_dir or tempfile.mkdtemp(prefix="split-parity-")
    rows = parity_beam.run(job, list(example_files),
                           os.path.join(scratch, "split_parity.jsonl"),
                           list(step.beam_pipeline_args))
    result.checks.extend(rows)
    if any(not r.passed for r in rows):
        result.check_passed = False
        if config.check_dict.get("mode", "fail") == "fail":
            tf.io.gfile.rmtree(result.output_dir)
            raise check.CheckFailed(check.CheckReport(result.checks))



def export(model: Any, config: Union[ExportConfig, dict, str], output_dir: str, *,
           overwrite: bool = False, example_builder: Optional[Any] = None,
           check: Optional[bool] = None, baseline: Optional[str] = None,
           record: Optional[publish.PublishRecord] = None) -> writer.ExportResult:
    """`export_archive.export`: the export step for Python callers.

    Arguments and result as `writer.export` documents them. The same step as the
    components and the CLI run, without their gates' inputs (a blessing, split
    parity); a breaking contract change in mode ``on_breaking: fail`` raises
    `contract.BreakingChange`, and a failed check `check.CheckFailed`.
    """
    outcome = run(ExportStep(model=model, config=config, output_dir=output_dir,
                             example_builder=example_builder, check=check,
                             baseline_dir=baseline, split_parity=False,
                             overwrite=overwrite, record=record))
    if not outcome.published:
        raise outcome.stopped_by
    return outcome.result


export.__doc__ += "\n" + (writer.export.__doc__ or "")
