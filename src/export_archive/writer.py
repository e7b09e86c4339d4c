"""`export(model, config, output_dir)`: build the archive and write it atomically."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import uuid
from typing import Any, Callable, Dict, List, Optional, Union

import tensorflow as tf
from absl import logging

from export_archive import archive, contract, describe, endpoints
from export_archive.config import ExportConfig
from export_archive.sources import ModelSource


class OutputExistsError(FileExistsError):
    pass


@dataclasses.dataclass
class EndpointResult:
    name: str
    method_name: str
    inputs: Dict[str, str]
    outputs: Dict[str, str]
    kind: str = "features"
    training: bool = False
    is_serving_default: bool = False


@dataclasses.dataclass
class ExportResult:
    """What `export` wrote: the endpoints with their specs, and check results."""
    output_dir: str
    flavor: str
    serving_default: str
    endpoints: List[EndpointResult]
    variable_collections: Dict[str, int]
    size_bytes: int
    checks: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    # None: no check ran; False only in check mode "warn" (fail mode raises).
    check_passed: Optional[bool] = None
    # The contract guard's verdict (`contract.ContractDiff.to_json()`), or
    # `contract.not_compared()` when no baseline was given.
    contract: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def endpoint_names(self) -> List[str]:
        return [e.name for e in self.endpoints]

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class BuiltArchive:
    """A filled ExportArchive, plus what the checks need beside it.

    Kept here, not on the archive: a tf_keras archive is itself the saved root, and
    an attribute set on it would be saved too.
    """
    archive: Any
    variable_collections: Dict[str, int]
    endpoint_names: List[str]
    # endpoint name -> its signature function, where the signature's outputs carry
    # the model's own names (endpoints.named_signature); the others save as they are.
    signature_functions: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def traced_endpoint(self, name: str):
        """The endpoint's signature as the server runs it: the traced graph (a
        ConcreteFunction) over the in-memory model's variables. The parity checks
        call this, never the eager Python function: eager execution would run ops
        that TF prunes from the served graph (e.g. a cast of an input no output
        depends on), and so could fail, or differ, where the server does not."""
        if name in self.signature_functions:
            return self.signature_functions[name]
        return _concrete_endpoint(self.archive, name)


def _concrete_endpoint(export_archive, name: str):
    """The ConcreteFunction of an archive endpoint (Keras 3 keeps a tf.function)."""
    traced = export_archive.concrete_endpoint(name)
    return traced.get_concrete_function() if hasattr(traced, "get_concrete_function") \
        else traced


def build_archive(source: ModelSource, config: ExportConfig,
                  example_builder: Optional[Callable] = None) -> BuiltArchive:
    """Creates and fills the ExportArchive for `source` as `config` says (no I/O)."""
    source.check_built()
    export_archive = archive.archive_class(source.flavor)()
    for trackable in source.trackables():
        export_archive.track(trackable)
    signature_functions = {}
    for i, endpoint in enumerate(config.endpoints):
        where = f"endpoints[{i}]"
        fn, signature = endpoints.build(endpoint, source, where, example_builder)
        export_archive.add_endpoint(name=endpoint.name, fn=fn, input_signature=signature)
        names = endpoints.default_output_names(endpoint, source)
        if names is not None:
            signature_functions[endpoint.name] = endpoints.named_signature(
                _concrete_endpoint(export_archive, endpoint.name), names)
    for name, trackable in getattr(example_builder, "trackables", {}).items():
        export_archive.attach(name, trackable)
    collections = {}
    for i, collection in enumerate(config.variable_collections):
        variables = source.variables_for(collection, f"variable_collections[{i}]")
        export_archive.add_variable_collection(collection.name, variables)
        collections[collection.name] = len(variables)
    return BuiltArchive(export_archive, collections, [e.name for e in config.endpoints],
                        signature_functions)


def export(model: Any, config: Union[ExportConfig, dict, str], output_dir: str, *,
           overwrite: bool = False, example_builder: Optional[Callable] = None,
           check: Optional[bool] = None, baseline: Optional[str] = None) -> ExportResult:
    """Exports `model` as a SavedModel with the endpoints `config` describes.

    Args:
      model: a Keras 3 model/layer, a tf_keras model, a `tf.Module`, or a path to
        a ``.keras`` file, an ``.h5`` file or a SavedModel directory.
      config: an `ExportConfig`, a dict, JSON text or a JSON file path.
      output_dir: where the SavedModel goes (``output_dir/saved_model.pb``).
      overwrite: replace a non-empty `output_dir` (otherwise refused).
      example_builder: builds ``kind: tf_example`` endpoints (see `examples`).
      check: run the serving check (TF Serving's contract, parity with the model,
        warmup file) before the export becomes visible. None: run it when the
        config has a ``check`` section (``"enabled": false`` turns it off).
      baseline: the SavedModel (or TFX Model artifact) clients are served today.
        The new serving contract is compared with it (`export_archive.contract`);
        a breaking change not in ``contract.allow`` raises `contract.BreakingChange`
        before anything is published (``contract.on_breaking: fail``, the
        default) or is reported in the result (``warn``).

    The SavedModel is written to a sibling temporary directory and renamed into
    place, so a failed or killed export never leaves a half-written model at
    `output_dir`.
    """
    config = ExportConfig.parse(config)
    output_dir = os.fspath(output_dir)
    _refuse_existing(output_dir, overwrite)
    if baseline is not None:
        baseline = _baseline_dir(os.fspath(baseline))
    source = ModelSource.wrap(model, config)
    built = build_archive(source, config, example_builder)
    options = tf.saved_model.SaveOptions(**config.save_options_dict)
    serving_default = config.serving_default_name
    method_names = dict(getattr(example_builder, "method_names", {}))
    options_check = config.check_dict
    run_check = options_check.get("enabled", bool(options_check)) if check is None else check
    reports, diffs = [], []
    options_contract = config.contract_dict

    def write(path):
        # verbose=False: the archive's stdout summary would interleave with the
        # CLI's output; the endpoints are logged below and listed in the result.
        built.archive.write_out(path, options=options, verbose=False,
                                serving_default=serving_default, method_names=method_names,
                                signature_functions=built.signature_functions)
        if baseline is not None:
            # On the staging directory, like the check below: a break in mode "fail"
            # raises before the rename, so the old model stays the served one. First,
            # since a break needs no serving check to be refused.
            diff = contract.compare(baseline, path, allow=options_contract.get("allow", ()))
            diffs.append(diff)
            if diff.breaking and options_contract.get("on_breaking", "fail") == "fail":
                raise contract.BreakingChange(diff)
        if run_check:
            # On the staging directory: a failing export (mode "fail") is never renamed
            # into place, so nothing half-checked can be pushed.
            report = _serving_check(path, built, config, example_builder)
            reports.append(report)
            if not report.passed and options_check.get("mode", "fail") == "fail":
                from export_archive.check import CheckFailed
                raise CheckFailed(report)

    _write_atomically(output_dir, write)
    logging.info("Exported %s model to %s with endpoints %s (serving_default=%s)",
                 source.flavor, output_dir, [e.name for e in config.endpoints], serving_default)
    result = _result(output_dir, source, config, built.variable_collections)
    if reports:
        result.checks, result.check_passed = reports[0].results, reports[0].passed
        if not reports[0].passed:
            logging.warning("Serving check failed (mode warn), exported anyway:\n%s",
                            reports[0].format_failures())
    result.contract = diffs[0].to_json() if diffs else contract.not_compared()
    if diffs and diffs[0].breaking:
        logging.warning("Breaking contract change (on_breaking warn), exported anyway:\n%s",
                        diffs[0].format())
    return result


def _baseline_dir(path: str) -> str:
    """A SavedModel directory, or a TFX Model artifact (its Format-Serving/)."""
    from export_archive.sources import resolve_model_path
    resolved = resolve_model_path(path)
    if not tf.io.gfile.exists(os.path.join(resolved, "saved_model.pb")):
        raise FileNotFoundError(
            f"baseline {path} is not a SavedModel: {resolved}/saved_model.pb does not exist. "
            "Give the served model's directory (e.g. a Pusher version directory) or a TFX "
            "Model artifact directory.")
    return resolved


def _serving_check(path, built: BuiltArchive, config, example_builder):
    from export_archive import check
    fns = {name: built.traced_endpoint(name) for name in built.endpoint_names}
    options = config.check_dict
    example_source = getattr(example_builder, "example_source", None)
    training = {e.name: e.training for e in config.endpoints}
    training.setdefault("serving_default", training[config.serving_default_name])
    return check.run_check(
        path, fns, training, example_source,
        rtol=options.get("rtol", check.DEFAULT_RTOL), atol=options.get("atol", check.DEFAULT_ATOL),
        warmup=options.get("warmup", True))


def _result(output_dir, source, config, collections) -> ExportResult:
    signatures = {s.name: s for s in describe.describe(output_dir)}
    serving_default = config.serving_default_name
    results = []
    for e in config.endpoints:
        sig = signatures[e.name]
        results.append(EndpointResult(
            name=e.name, method_name=sig.method_name, inputs=sig.inputs, outputs=sig.outputs,
            kind=e.kind, training=e.training, is_serving_default=(e.name == serving_default)))
    return ExportResult(output_dir=output_dir, flavor=source.flavor,
                        serving_default=serving_default, endpoints=results,
                        variable_collections=collections, size_bytes=directory_size(output_dir))


def directory_size(path: str) -> int:
    total = 0
    for dirname, _, files in tf.io.gfile.walk(path):
        for name in files:
            total += tf.io.gfile.stat(os.path.join(dirname, name)).length
    return total


# ---- atomic output


def _is_remote(path: str) -> bool:
    return "://" in path


def _refuse_existing(output_dir: str, overwrite: bool) -> None:
    if overwrite or not tf.io.gfile.exists(output_dir):
        return
    if not tf.io.gfile.isdir(output_dir):
        raise OutputExistsError(f"Output path {output_dir} exists and is not a directory.")
    if tf.io.gfile.listdir(output_dir):
        raise OutputExistsError(
            f"Output directory {output_dir} is not empty. Choose a new directory, or pass "
            "overwrite=True (CLI: --overwrite) to replace its contents.")


def _write_atomically(output_dir: str, write: Callable[[str], None]) -> None:
    if _is_remote(output_dir):
        _write_remote(output_dir, write)
        return
    parent = os.path.dirname(os.path.abspath(output_dir))
    os.makedirs(parent, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    base = os.path.basename(os.path.abspath(output_dir))
    staging = os.path.join(parent, f".{base}.tmp-{token}")
    try:
        write(staging)
        if os.path.exists(output_dir):
            # Move the old export aside first: a rename is the only step a reader
            # (TF Serving, Pusher) can observe, and it sees old or new, never a mix.
            retired = os.path.join(parent, f".{base}.old-{token}")
            os.rename(output_dir, retired)
            os.rename(staging, output_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, output_dir)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _write_remote(output_dir: str, write: Callable[[str], None]) -> None:
    # Object stores have no directory rename: write locally, then copy with
    # saved_model.pb last, since its appearance is what marks a SavedModel complete
    # (TF Serving polls for it; Pusher copies it last for the same reason).
    local = tempfile.mkdtemp(prefix="export-archive-")
    try:
        write(os.path.join(local, "m"))
        if tf.io.gfile.exists(output_dir):
            tf.io.gfile.rmtree(output_dir)
        root = os.path.join(local, "m")
        last = None
        for dirname, _, files in tf.io.gfile.walk(root):
            rel = os.path.relpath(dirname, root)
            target_dir = output_dir if rel == "." else f"{output_dir}/{rel}"
            tf.io.gfile.makedirs(target_dir)
            for name in files:
                src, dst = os.path.join(dirname, name), f"{target_dir}/{name}"
                if rel == "." and name == "saved_model.pb":
                    last = (src, dst)
                    continue
                tf.io.gfile.copy(src, dst, overwrite=True)
        if last:
            tf.io.gfile.copy(*last, overwrite=True)
    finally:
        shutil.rmtree(local, ignore_errors=True)
