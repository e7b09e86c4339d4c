"""`export(model, config, output_dir)`: build the archive and write it atomically."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import resource
import shutil
import tempfile
from typing import Any, Callable, Dict, List, Optional, Union

import tensorflow as tf
from absl import logging

from export_archive import (archive, contract, contract_process, describe, endpoints,
                            keras_weights, memory, publish, servable_outputs, tracking,
                            user_requests, vocabularies)
# Named apart from `export`'s `check` argument, which would hide the module there.
from export_archive import check as serving_check
from export_archive.config import ConfigError, ExportConfig
from export_archive.constants import DEFAULT_SIGNATURE
from export_archive.errors import InputError
# The output errors live with the publish primitives (no TensorFlow there, so the CLI
# can check an output path before importing it); re-exported here as before.
from export_archive.publish import (OutputError, OutputExistsError,  # noqa: F401
                                    OutputPathError, OutputWriteError,
                                    check_output_path)
from export_archive.rows import CheckRow
from export_archive.sources import (ModelSource, check_saved_model_proto, error_summary,
                                    resolve_model_path)


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
    checks: List[CheckRow] = dataclasses.field(default_factory=list)   # as JSON in to_json()
    # None: no check ran; False only in check mode "warn" (fail mode raises).
    check_passed: Optional[bool] = None
    # The contract guard's verdict (`contract.ContractDiff.to_json()`), or
    # `contract.not_compared()` when no baseline was given.
    contract: Dict[str, Any] = dataclasses.field(default_factory=dict)
    # True when `overwrite` replaced a previous export (it is gone now).
    replaced_previous: bool = False

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
    # collection name -> (its config path, the source's variables), to check the
    # written collections against (`tracking.verify_collections`).
    collection_sources: Dict[str, Any] = dataclasses.field(default_factory=dict)

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
    """Creates and fills the ExportArchive for `source` as `config` says (no I/O).

    Everything an endpoint's function uses must be saved with it: the model, the
    config's `track` objects and what factories return beside their functions are
    tracked, and an endpoint that captures anything else is refused here
    (`tracking.UntrackedResourceError`), before anything is traced for writing.
    """
    source.check_built()
    export_archive = archive.archive_class(source.flavor)()
    roots = list(source.trackables())
    for trackable in roots:
        export_archive.track(trackable)
    for path, trackable in tracking.resolve_track(config, source):
        tracking.track(export_archive, trackable, path)
        roots.append(trackable)
    signature_functions, captured = {}, {}
    for i, endpoint in enumerate(config.endpoints):
        where = f"endpoints[{i}]"
        fn, signature, held = endpoints.build(endpoint, source, where, example_builder)
        for trackable in held:   # what a factory returned beside its function
            tracking.track(export_archive, trackable, f"{where}.fn")
            roots.append(trackable)
        export_archive.add_endpoint(name=endpoint.name, fn=fn, input_signature=signature)
        captured[endpoint.name] = (where, _concrete_endpoint(export_archive, endpoint.name))
        # Refused here, not in the check: it holds with the check off too.
        servable_outputs.refuse_unservable(captured[endpoint.name][1], endpoint.name, where)
        names = endpoints.default_output_names(endpoint, source)
        if names is not None:
            signature_functions[endpoint.name] = endpoints.named_signature(
                captured[endpoint.name][1], names)
    for name, trackable in getattr(example_builder, "trackables", {}).items():
        export_archive.attach(name, trackable)
        roots.append(trackable)
    tracking.check_captures(captured, roots)
    collections, expected = {}, {}
    for i, collection in enumerate(config.variable_collections):
        variables = source.variables_for(collection, f"variable_collections[{i}]")
        export_archive.add_variable_collection(collection.name, variables)
        collections[collection.name] = len(variables)
        expected[collection.name] = (f"variable_collections[{i}]", list(variables))
    return BuiltArchive(export_archive, collections, [e.name for e in config.endpoints],
                        signature_functions, expected)


def export(model: Any, config: Union[ExportConfig, dict, str], output_dir: str, *,
           overwrite: bool = False, example_builder: Optional[Callable] = None,
           check: Optional[bool] = None, baseline: Optional[str] = None,
           record: Optional[publish.PublishRecord] = None,
           preflight: Optional[Callable[[int], None]] = None) -> ExportResult:
    """Exports `model` as a SavedModel with the endpoints `config` describes.

    Args:
      model: a Keras 3 model/layer, a tf_keras model, a `tf.Module`, or a path to
        a ``.keras`` file, an ``.h5`` file or a SavedModel directory.
      config: an `ExportConfig`, a dict, JSON text or a JSON file path.
      output_dir: where the SavedModel goes (``output_dir/saved_model.pb``).
      overwrite: replace an existing export at `output_dir` (otherwise refused).
        Only a SavedModel directory or an empty directory is replaced; a file or
        any other directory is refused.
      example_builder: builds ``kind: tf_example`` endpoints (see `examples`).
      check: run the serving check (TF Serving's contract, parity with the model,
        warmup file) before the export becomes visible. None: run it when the
        config has a ``check`` section (``"enabled": false`` turns it off).
      baseline: the SavedModel (or TFX Model artifact) clients are served today.
        The new serving contract is compared with it (`export_archive.contract`);
        a breaking change not in ``contract.allow`` raises `contract.BreakingChange`
        before anything is published (``contract.on_breaking: fail``, the
        default) or is reported in the result (``warn``).
      record: a `publish.PublishRecord` that tells a caller interrupted at any
        point (e.g. by a signal) whether this export was published.
      preflight: called with the model's weight bytes once the archive is built and
        before anything is written; raises to refuse (the step's split parity
        checks its workers' memory this way).

    The SavedModel is written to a sibling staging directory, fsynced and published
    by one atomic rename (an atomic exchange when overwriting), so a failed or
    killed export never leaves a half-written model at `output_dir`, and readers
    never find the path empty. Staging directories that killed writers left
    behind are removed by the next export to the same path.
    """
    config = ExportConfig.parse(config)
    output_dir = os.fspath(output_dir)
    check_output_path(output_dir)
    _refuse_existing(output_dir, overwrite)
    if baseline is not None:
        baseline = _baseline_dir(os.fspath(baseline))
    # The check's clean TF process starts now: its TensorFlow import overlaps the
    # model load, trace and write below (a no-op if the CLI started it already).
    run_check = contract_process.prestart_for(config, check)
    source = ModelSource.wrap(model, config)
    # Loaded here from a path: nobody else holds it, so the serving check may free its
    # weights once their answers are known (see `_release_weights`).
    owned_model = isinstance(model, (str, os.PathLike))
    # From tracing until written, the model's lookup vocabularies are asset files,
    # not graph constants (vocabularies.py); the model is given back unchanged.
    with vocabularies.as_assets(source.trackables()):
        built = build_archive(source, config, example_builder)
        # Before anything is written: a check process (or Beam worker) the kernel kills
        # half-way would leave the user an OOM instead of a reason.
        try:
            if run_check or preflight is not None:
                weight_bytes = _variables_bytes(built)
                if run_check:
                    memory.require_for_check(weight_bytes)
                if preflight is not None:
                    preflight(weight_bytes)
        except InputError:
            contract_process.discard()   # the process started above has nothing to check
            raise
        options = tf.saved_model.SaveOptions(**config.save_options_dict)
        serving_default = config.serving_default_name
        method_names = dict(getattr(example_builder, "method_names", {}))
        options_check = config.check_dict
        reports, diffs, staged = [], [], []
        options_contract = config.contract_dict

        def write(path):
            # verbose=False: the archive's stdout summary would interleave with the
            # CLI's output; the endpoints are logged below and listed in the result.
            try:
                built.archive.write_out(path, options=options, verbose=False,
                                        serving_default=serving_default,
                                        method_names=method_names,
                                        signature_functions=built.signature_functions)
            except AssertionError as e:
                # What `check_captures` could not attribute: the save's own refusal.
                error = tracking.untracked_save_error(e, built.endpoint_names)
                if error is None:
                    raise
                raise error from None
            except tf.errors.InvalidArgumentError as e:
                device = config.save_options_dict.get("experimental_io_device")
                if device is None or "device" not in str(e):
                    raise
                raise ConfigError(
                    "save_options.experimental_io_device", "no such device on this machine "
                    f"({error_summary(e)})", device, "a device of this machine, e.g. "
                    '"/job:localhost" or "/job:localhost/device:CPU:0"',
                    "name a device this machine has, or omit the option") from None
            # Nothing asked for is silently lost: each endpoint is a signature, each
            # collection holds what its source holds, each asset read is in assets/.
            tracking.verify_signatures(path, built.endpoint_names)
            tracking.verify_collections(path, built.collection_sources)
            tracking.verify_assets(path)
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
                report = _serving_check(path, built, config, example_builder,
                                        release=owned_model)
                reports.append(report)
                if not report.passed and options_check.get("mode", "fail") == "fail":
                    raise serving_check.CheckFailed(report)
            # Described here, not after publishing: by then a concurrent --overwrite
            # writer may have replaced it, and the result must describe this export.
            staged.append(_result(path, source, config, built.variable_collections))

        replaced = _write_atomically(output_dir, write, overwrite=overwrite, record=record,
                                     variables_bytes=lambda: _variables_bytes(built))
    logging.info("Exported %s model to %s with endpoints %s (serving_default=%s)",
                 source.flavor, output_dir, [e.name for e in config.endpoints], serving_default)
    result = staged[0]
    result.output_dir, result.replaced_previous = output_dir, replaced
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
    resolved = resolve_model_path(path)
    if not tf.io.gfile.exists(os.path.join(resolved, "saved_model.pb")):
        raise FileNotFoundError(
            f"baseline {path} is not a SavedModel: {resolved}/saved_model.pb does not exist. "
            "Give the served model's directory (e.g. a Pusher version directory) or a TFX "
            "Model artifact directory.")
    check_saved_model_proto(resolved)   # a corrupt one: SourceError naming the file
    return resolved


def _serving_check(path, built: BuiltArchive, config, example_builder, release: bool):
    fns = {name: built.traced_endpoint(name) for name in built.endpoint_names}
    options = config.check_dict
    example_source = getattr(example_builder, "example_source", None)
    training = {e.name: e.training for e in config.endpoints}
    training.setdefault(DEFAULT_SIGNATURE, training[config.serving_default_name])
    supplied = (user_requests.load(options["requests"], path)
                if options.get("requests") else None)
    return serving_check.run_check(
        path, fns, training, example_source,
        rtol=options.get("rtol", serving_check.DEFAULT_RTOL),
        atol=options.get("atol", serving_check.DEFAULT_ATOL),
        warmup=options.get("warmup", True), supplied=supplied,
        serving_runtime=config.serving_runtime,
        release_model=(lambda: _release_weights(built)) if release else None)


def _release_weights(built: BuiltArchive) -> None:
    """Frees the buffers of the model's big variables once the export no longer needs
    them: written, and the in-memory answers the parity compares with computed.

    Only for a model this export loaded from a path, before the serving check's process
    loads the served copy: without it the two copies are resident together, and a
    machine for the check needs twice the weights (bench/bench_scale.py). Each variable
    keeps its object and shape; its buffer becomes an empty tensor, so the model must not
    be called again (nothing calls it: the export returns its result, and a split
    parity's Beam workers load the model from its path).
    """
    for variable, nbytes in _sized_variables(built):
        dtype = variable.dtype
        if (nbytes >= keras_weights.STREAM_BYTES and dtype.is_numpy_compatible
                and dtype != tf.string):
            tf.raw_ops.AssignVariableOp(resource=variable.handle, value=tf.zeros(
                [0] * variable.shape.rank, dtype), validate_shape=False)


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


# Failures of the machine, not of the export: they get one paragraph naming the
# path and the space needed, never a TensorFlow traceback.
_ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _refuse_existing(output_dir: str, overwrite: bool) -> None:
    if not tf.io.gfile.exists(output_dir):
        return
    if _is_remote(output_dir):
        if not overwrite and tf.io.gfile.listdir(output_dir):
            raise OutputExistsError(
                f"Output directory {output_dir} is not empty. Choose a new directory, or "
                "pass overwrite=True (CLI: --overwrite) to replace its contents.")
        return
    if overwrite:
        _refuse_unreplaceable(output_dir)
    elif not os.path.isdir(output_dir):
        raise OutputExistsError(
            f"Output path {output_dir} exists and is not a directory. Choose another "
            "path; --overwrite replaces only a SavedModel directory, never a file.")
    elif os.listdir(output_dir):
        raise OutputExistsError(
            f"Output directory {output_dir} is not empty. Choose a new directory, or pass "
            "overwrite=True (CLI: --overwrite) to replace its contents.")


def _refuse_unreplaceable(output_dir: str) -> None:
    """`overwrite` replaces an export, never other data: only a directory holding a
    SavedModel, or an empty one. Anything else stays untouched and is refused."""
    if os.path.isdir(output_dir) and not os.path.islink(output_dir):
        names = os.listdir(output_dir)
        if not names or {"saved_model.pb", "saved_model.pbtxt"} & set(names):
            return
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        what = f"a directory holding no SavedModel ({shown})"
    elif os.path.islink(output_dir):
        what = f"a symbolic link to {os.readlink(output_dir)}"
    else:
        what = "a file"
    raise OutputExistsError(
        f"--overwrite (overwrite=True) refused: {output_dir} is {what}. It replaces only a "
        "directory that holds a SavedModel (saved_model.pb) or an empty one, so nothing "
        "else can be lost. Nothing was changed. fix: choose another --output, or move "
        f"{output_dir} away yourself.")


def _write_atomically(output_dir: str, write: Callable[[str], None], *,
                      overwrite: bool = False,
                      record: Optional[publish.PublishRecord] = None,
                      variables_bytes: Callable[[], int] = lambda: 0) -> bool:
    """Writes through `write(staging)` and publishes; True if it replaced an export."""
    if _is_remote(output_dir):
        _write_remote(output_dir, write)
        return False
    parent = os.path.dirname(os.path.abspath(output_dir))
    with contextlib.ExitStack() as stack:
        try:
            os.makedirs(parent, exist_ok=True)
            staging = stack.enter_context(publish.Staging(output_dir, record))
        except OSError as e:
            code = _environment_errno(e)
            if code is None:
                raise
            raise OutputWriteError(code, (
                f"could not create the staging directory for {output_dir} in {parent}: "
                f"{os.strerror(code)}. fix: choose another --output, or free space in / "
                f"make writable {parent}. Nothing was published.")) from e
        try:
            write(staging.path)
            publish.fsync_tree(staging.path)
        except Exception as e:
            code = _environment_errno(e)
            if code is None:
                raise
            raise OutputWriteError(code, _write_error_message(
                output_dir, staging.path, code, variables_bytes)) from e
        replaced = _publish(staging.path, output_dir, overwrite)
        # After an exchange the staging path holds the previous export, which
        # Staging's exit removes; the parent's fsync makes the rename durable.
        publish.fsync_dir(parent)
        return replaced


def _publish(staging: str, output_dir: str, overwrite: bool) -> bool:
    try:
        return publish.publish(staging, output_dir, overwrite, _refuse_unreplaceable)
    except OutputError:
        raise
    except FileExistsError:
        raise OutputExistsError(
            f"Output directory {output_dir} was filled by another writer while this "
            "export was being written; that export was kept and this one was not "
            "published. Choose a new directory, or pass overwrite=True (CLI: "
            "--overwrite) to replace it.") from None


def _environment_errno(error: BaseException) -> Optional[int]:
    """The errno of a full disk, size limit or read-only filesystem behind `error`
    (an OSError, or a TensorFlow error that only carries its message)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _ENVIRONMENT_ERRNOS:
            return error.errno
        if isinstance(error, tf.errors.OpError):
            for code in _ENVIRONMENT_ERRNOS:
                if os.strerror(code) in (error.message or ""):
                    return code
        error = error.__cause__ or error.__context__
    return None


def _write_error_message(output_dir: str, staging: str, code: int,
                         variables_bytes: Callable[[], int]) -> str:
    written = sum(os.path.getsize(os.path.join(d, f))
                  for d, _, files in os.walk(staging) for f in files
                  if os.path.isfile(os.path.join(d, f)))
    variables = variables_bytes()
    needed = max(written, variables)
    parent = os.path.dirname(os.path.abspath(output_dir))
    head = (f"could not write the export for {output_dir} (staged in {staging}): "
            f"{os.strerror(code)}. It needs at least {needed} bytes (the model's variables "
            f"alone are {variables} bytes; {written} bytes were written before the "
            "failure).")
    if code == errno.EFBIG:
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        shown = "unlimited" if limit == resource.RLIM_INFINITY else f"{limit} bytes"
        fix = (f"The file size limit (ulimit -f) is {shown}. fix: raise it, e.g. "
               "`ulimit -f unlimited`, and run again.")
    elif code in (errno.ENOSPC, errno.EDQUOT):
        stat = os.statvfs(parent)
        fix = (f"{stat.f_bavail * stat.f_frsize} bytes are free on the filesystem of "
               f"{parent}. fix: free space there, or choose an --output on a filesystem "
               "with room.")
    else:
        fix = f"fix: make {parent} writable, or choose another --output."
    return (f"{head} {fix} Nothing was published: {output_dir} is as it was before, and "
            "the staging directory was removed.")


def _sized_variables(built: BuiltArchive):
    """(tf.Variable, its bytes) for each of the archive's variables of a known shape."""
    for variable in getattr(built.archive, "variables", None) or []:
        variable = archive.unwrap_variable(variable)
        try:
            nbytes = variable.shape.num_elements() * variable.dtype.size
        except (AttributeError, TypeError):
            continue   # not a tf.Variable with a known shape: leave it out
        yield variable, nbytes


def _variables_bytes(built: BuiltArchive) -> int:
    return sum(nbytes for _, nbytes in _sized_variables(built))


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
