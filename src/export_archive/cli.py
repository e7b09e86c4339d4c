"""The `export-archive` command line: export, check, describe, diff.

    export-archive export --model PATH --config FILE --output DIR [--overwrite]
                          [--baseline DIR]
    export-archive describe DIR [--json]
    export-archive check DIR [--json]
    export-archive diff OLD NEW [--json]

Exit status (every failure is one paragraph on stderr, without a traceback):
0 ok; 1 the machine failed the export (disk full, file size limit) or an internal
error, which says where to report it (`export-archive --traceback ...` adds the
traceback); 2 the user's input cannot be used (config, model file, paths,
permissions, flags); 3 the serving check failed or the new model breaks the
baseline's serving contract.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import sys
import tempfile
import traceback
import warnings
from typing import List, Optional

# Modules that import no TensorFlow. The others are imported in the commands, inside
# `_tensorflow_loading_quietly` and after `contract_process.prestart_for`: the check's
# process is forked from this one right after TensorFlow loads (contract_process).
from export_archive import (__version__, contract, contract_process, interrupt, memory,
                            publish)
from export_archive.config import ConfigError, ExportConfig, InputError, check_allowed_breaks
from export_archive.rows import failure_lines
from export_archive.runtimes import (FLAG_PATH, parse_serving_runtime,
                                     with_serving_runtime)
from export_archive.user_requests import parse_flags, with_flag_requests

EXIT_INTERNAL_ERROR = 1   # a bug (says where to report it), or the machine ran out of space
EXIT_USER_ERROR = 2
EXIT_CHECK_FAILED = 3  # the serving check failed, or a breaking contract change
EXIT_STATUS_HELP = ("exit status: 0 ok; 1 disk full / size limit, or an internal error "
                    "(reported with where to file it; --traceback prints the traceback); "
                    "2 user error (bad config, unusable model file, output path or "
                    "permissions); 3 the serving check failed, or NEW breaks OLD's "
                    "serving contract")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export-archive",
        description="Export a trained Keras model as a servable SavedModel, check it, "
                    "or describe a SavedModel's signatures.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--traceback", action="store_true",
                        help="on an internal error, print the Python traceback too (for "
                             "a bug report)")
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's C++ log lines (off by default, unless "
                             "TF_CPP_MIN_LOG_LEVEL is set) and other libraries' "
                             "deprecation warnings")
    sub = parser.add_subparsers(dest="command", required=True)

    exp = sub.add_parser("export", help="export a model with the endpoints of a config")
    exp.add_argument("--model", required=True,
                     help="a .keras file, an .h5 file, a SavedModel directory, or a TFX "
                          "Model artifact directory (its Format-Serving/ is used)")
    exp.add_argument("--config", required=True,
                     help="the export config: a JSON file, or JSON text")
    exp.add_argument("--output", required=True, help="directory for the SavedModel")
    exp.add_argument("--overwrite", action="store_true",
                     help="replace a non-empty output directory")
    exp.add_argument("--schema", help="Schema artifact dir or schema.pbtxt (tf_example endpoints)")
    exp.add_argument("--transform-graph", help="Transform graph artifact dir (tf_example endpoints)")
    exp.add_argument("--examples", help="tf.Example TFRecords for the serving check: a file "
                                        "glob, a directory, or an Examples artifact dir")
    check_flags = exp.add_mutually_exclusive_group()
    check_flags.add_argument("--check", dest="check", action="store_const", const=True,
                             help="run the serving check before publishing (default: as the "
                                  "config's `check` section says)")
    check_flags.add_argument("--no-check", dest="check", action="store_const", const=False)
    exp.add_argument("--requests", action="append", default=[], metavar="FORMAT:PATH",
                     help=REQUESTS_HELP + ", before its entries")
    exp.add_argument("--serving-runtime", metavar="X.Y", help=SERVING_RUNTIME_HELP
                     + " (replaces the config's `serving_runtime`)")
    exp.add_argument("--baseline", help="the SavedModel clients are served today (or a TFX "
                                        "Model artifact dir): a change that breaks its "
                                        "serving contract stops the export (exit 3), as the "
                                        "config's `contract` section says")
    exp.add_argument("--json", action="store_true", help="print the result as JSON")

    desc = sub.add_parser("describe", help="list a SavedModel's signatures")
    desc.add_argument("dir", help="SavedModel directory")
    desc.add_argument("--json", action="store_true", help="print JSON")

    chk = sub.add_parser("check", help="check a SavedModel the way TF Serving loads it",
                         epilog=EXIT_STATUS_HELP,
                         description="Load DIR the way TF Serving does and call every "
                                     "signature at batch 1 and 64, with the model's own "
                                     "warmup requests, else --examples, else synthesized "
                                     "inputs (the output says which).")
    chk.add_argument("dir", help="SavedModel directory")
    chk.add_argument("--examples", help="tf.Example TFRecords to send to string (tf.Example) "
                                        "inputs: a file glob, a directory, or an Examples "
                                        "artifact dir")
    chk.add_argument("--requests", action="append", default=[], metavar="FORMAT:PATH",
                     help=REQUESTS_HELP + "; before the model's own warmup requests")
    chk.add_argument("--serving-runtime", metavar="X.Y", help=SERVING_RUNTIME_HELP)
    chk.add_argument("--json", action="store_true",
                     help="print JSON (always: errors too, as {\"error\": ...})")

    dif = sub.add_parser("diff", help="compare two SavedModels' serving contracts; exit 3 "
                                      "when NEW breaks clients of OLD")
    dif.add_argument("old", help="the baseline SavedModel (or TFX Model artifact) directory")
    dif.add_argument("new", help="the new SavedModel (or TFX Model artifact) directory")
    dif.add_argument("--allow", action="append", default=[], metavar="KIND:PATH",
                     help="an intentional break, by the id this command prints "
                          "(repeatable; shell-style wildcards)")
    dif.add_argument("--no-replay", action="store_true",
                     help="compare signatures only; do not replay OLD's warmup requests")
    dif.add_argument("--json", action="store_true", help="print JSON")
    return parser


REQUESTS_HELP = ("FORMAT:PATH, repeatable: requests for the serving check (and the "
                 "warmup file) instead of synthesized ones. FORMAT warmup (TFRecords of "
                 "TF Serving PredictionLogs), rest (TF Serving REST :predict bodies, one "
                 "per .json file or per line of a .jsonl file) or examples (tf.Example "
                 "TFRecords); PATH a file, glob or directory. As the config's "
                 "check.requests (docs/requests.md)")

SERVING_RUNTIME_HELP = ("the TensorFlow of the server (e.g. 2.15, Vertex AI's newest "
                        "prebuilt image): the check refuses ops and attrs it lacks "
                        "(docs/runtimes.md; default: the exporting TF)")


def _user_error(message: str) -> int:
    print(f"export-archive: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _cmd_export(args) -> int:
    try:
        config = ExportConfig.parse(
            args.config if args.config.lstrip().startswith("{") else os.fspath(args.config))
        if args.requests:
            config = with_flag_requests(config, args.requests)
        if args.serving_runtime:
            config = with_serving_runtime(config, args.serving_runtime)
    except ConfigError as e:
        return _user_error(str(e))
    try:   # an unusable --output fails here, before any process, import or load
        publish.check_output_path(args.output)
    except publish.OutputPathError as e:
        return _user_error(str(e))
    # Before our own TensorFlow import (writer, sources): the check's clean process is
    # forked from ours right after TensorFlow loads, instead of importing it anew
    # after the SavedModel is written (contract_process).
    with _tensorflow_loading_quietly():   # prestart_for may import it for the fork
        contract_process.prestart_for(config, args.check)
        from export_archive import check, describe, step, writer   # TensorFlow: see the top
        from export_archive.sources import SourceError, resolve_model_path

    example_files = ()
    if args.schema or args.transform_graph:
        try:
            from export_archive import examples   # TensorFlow: see the top
        except ImportError:
            return _user_error("--schema/--transform-graph need tf_example support, which "
                               "this installation lacks (install the 'transform' extra).")
        example_files = examples.find_example_files(args.examples) if args.examples else ()
    try:
        # The export step of every front door; the CLI has no blessing input, and
        # split parity runs when --examples are given and the check runs.
        outcome = step.run(step.ExportStep(
            model=resolve_model_path(args.model), config=config, output_dir=args.output,
            schema_path=args.schema, transform_graph_path=args.transform_graph,
            example_files=example_files, baseline_dir=args.baseline, check=args.check,
            overwrite=args.overwrite, record=getattr(args, "record", None)))
    except writer.OutputWriteError as e:
        # The machine failed the write (disk full, size limit, read-only): exit 1,
        # but one paragraph, since the message says what to fix; not a bug report.
        print(f"export-archive: error: {e}", file=sys.stderr)
        return 1
    except (ConfigError, SourceError, writer.OutputError, FileNotFoundError) as e:
        return _user_error(str(e))
    except check.CheckFailed as e:
        print(f"export-archive: {e}\nNothing was written to {args.output}.", file=sys.stderr)
        return EXIT_CHECK_FAILED
    if not outcome.published:   # the contract guard (a blessing gate is not a CLI input)
        print(f"export-archive: {outcome.stopped_by}\nNothing was written to "
              f"{args.output}.", file=sys.stderr)
        return EXIT_CHECK_FAILED
    result = outcome.result
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(f"Exported {result.flavor} model to {result.output_dir} "
              f"({result.size_bytes} bytes); serving_default -> {result.serving_default}")
        if result.replaced_previous:
            print(f"  replaced the previous export at {result.output_dir} (--overwrite)")
        for e in result.endpoints:
            print(f"  {describe.signature_line(e)}{' (training mode)' if e.training else ''}")
        for name, count in result.variable_collections.items():
            print(f"  variable collection {name}: {count} variables")
        if result.check_passed is None:
            # The API's default; ModelExporter always checks. Say so rather than be silent.
            print("  serving check: not run (pass --check, or add a \"check\" section "
                  "to the config)")
        else:
            print("  serving check: " + ("passed" if result.check_passed else
                                         "FAILED (mode warn, exported anyway)"))
            for line in failure_lines(result.checks):
                print(f"    {line}")
        print(f"  {result.contract['summary']}")
        for change in result.contract["changes"]:
            print(f"    {change['id']}: {change['old']} -> {change['new']}"
                  f"{' (BREAKING)' if change['breaking'] and not change['allowed'] else ''}")
    return 0


def _saved_model_dir(path: str) -> str:
    """`path` (or its TFX artifact's Format-Serving/) if saved_model.pb is there and
    parses, its assets are there and its variables read back; else a `SourceError`
    naming the damaged file (empty, truncated, missing saved_model.pb; a missing
    asset; corrupt variables.index or data shard)."""
    # TensorFlow: see the top (the commands have imported it by now).
    from export_archive.sources import (check_saved_model_assets, check_saved_model_proto,
                                        check_saved_model_variables, resolve_model_path)
    resolved = resolve_model_path(path)
    check_saved_model_assets(resolved, check_saved_model_proto(resolved))
    check_saved_model_variables(resolved)
    return resolved


def _cmd_describe(args) -> int:
    with _tensorflow_loading_quietly():   # TensorFlow: see the top
        from export_archive import describe
        from export_archive.sources import resolve_model_path
    try:
        signatures = describe.describe(_saved_model_dir(args.dir))
    except (FileNotFoundError, ValueError) as e:
        return _user_error(str(e))
    alias = describe.serving_default_alias(resolve_model_path(args.dir))
    if args.json:
        print(json.dumps([{**s.to_json(), "serving_default_of": alias
                           if s.name == describe.DEFAULT_SIGNATURE else None}
                          for s in signatures], indent=2))
    else:
        print(describe.format_signatures(signatures, alias))
    return 0


def _cmd_check(args) -> int:
    with _tensorflow_loading_quietly():
        contract_process.prestart_for(None, True)   # before our TensorFlow import: see there
        from export_archive import check, examples   # TensorFlow: see the top

    def error(message):
        if args.json:   # a script reading --json output must get JSON on every path
            print(json.dumps({"passed": False, "error": message}, indent=2))
        return _user_error(message)
    try:
        example_files = None
        if args.examples:
            example_files = examples.find_example_files(args.examples)
            if not example_files:
                return error(f"--examples `{args.examples}`: no record files found. fix: "
                             "give a TFRecord file glob, a directory of them, or an "
                             "ExampleGen Examples artifact directory.")
        runtime = (parse_serving_runtime(args.serving_runtime, FLAG_PATH)
                   if args.serving_runtime else None)
        report = check.check_saved_model(_saved_model_dir(args.dir), example_files,
                                         requests=parse_flags(args.requests),
                                         serving_runtime=runtime)
    except (FileNotFoundError, ValueError) as e:
        return error(str(e))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.format())
    return 0 if report.passed else EXIT_CHECK_FAILED


def _cmd_diff(args) -> int:
    with _tensorflow_loading_quietly():   # imports TensorFlow at its end, for contract.compare
        pass
    try:
        check_allowed_breaks(args.allow, "--allow")
        old, new = (_saved_model_dir(d) for d in (args.old, args.new))
        diff = contract.compare(old, new, allow=args.allow, replay=not args.no_replay)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return _user_error(str(e))
    if args.json:
        print(json.dumps(diff.to_json(), indent=2))
    else:
        print(diff.format())
    return EXIT_CHECK_FAILED if diff.breaking else 0


# Third-party noise a quiet command hides: deprecation notices that TensorFlow, Keras,
# Beam / tf.Transform and the Google client libraries raise about their own internals
# or their dependencies' versions (importing TensorFlow alone warns that
# google.api_core will drop Python 3.10: advice for whoever maintains the
# environment, not for this command's user). Only these categories and only from
# these packages: a UserWarning, or any warning from the user's or our own code, is
# still printed. The main job's console hides the same (pipelines/console.py).
NOISY_WARNING_CATEGORIES = (FutureWarning, DeprecationWarning, PendingDeprecationWarning)
NOISY_WARNING_MODULES = (r"(apache_beam|tfx|tfx_bsl|tensorflow|tensorflow_transform|"
                         r"tensorflow_model_analysis|tensorflow_data_validation|keras|tf_keras|"
                         r"google|proto|pkg_resources|setuptools|pyarrow|numpy)(\..*)?$")


def quiet_native_logs(argv: Optional[List[str]] = None) -> None:
    """Quiets what other libraries print on a healthy run, unless the user asked for it
    (`--verbose`). Must run before TensorFlow loads.

    - TensorFlow's C++ logging goes down to FATAL, unless TF_CPP_MIN_LOG_LEVEL is set.
      TF 2.17+ wheels log `failed call to cuInit` at ERROR on every machine without a
      GPU, and some start-up lines read as failures; output errors reach the user
      as exceptions anyway, in the one paragraph the CLI prints.
    - The third-party warnings above are ignored, unless the user chose warning
      filters (`python -W`, PYTHONWARNINGS).
    """
    global _quiet_native
    args = sys.argv[1:] if argv is None else argv
    _quiet_native = "--verbose" not in args and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if "--verbose" in args:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not sys.warnoptions:
        for category in NOISY_WARNING_CATEGORIES:
            warnings.filterwarnings("ignore", category=category, module=NOISY_WARNING_MODULES)


# True when quiet_native_logs chose TF's log level (no --verbose, none set by the user).
_quiet_native = False


@contextlib.contextmanager
def _tensorflow_loading_quietly():
    """Loads TensorFlow (in the block, or after it) with its native start-up lines kept
    off the terminal, when quiet_native_logs chose the log level. The block holds
    what must run before our own TensorFlow import (contract_process.prestart_for,
    which may import it for the check process's fork) and the command's imports.

    TF 2.18+ logs through absl before anything calls absl::InitializeLog, and absl
    then writes every line (oneDNN, CUDA probing: INFO) to stderr whatever
    TF_CPP_MIN_LOG_LEVEL says. So file descriptor 2 goes to a temporary file for the
    block alone; the file is shown when an import fails.
    """
    if not _quiet_native or "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    real_stderr = os.dup(2)
    with tempfile.TemporaryFile() as native:
        os.dup2(native.fileno(), 2)
        try:
            yield
            import tensorflow  # noqa: F401  (if the block did not load it: here, quietly)
        except ImportError:   # e.g. TensorFlow's own library failed to load: say why
            sys.stderr.flush()
            os.dup2(real_stderr, 2)
            native.seek(0)
            sys.stderr.write(native.read().decode(errors="replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(real_stderr, 2)
            os.close(real_stderr)


def main(argv: Optional[List[str]] = None) -> int:
    quiet_native_logs(argv)
    memory.give_freed_memory_back()
    record = publish.PublishRecord()   # tells an interrupted export what it did
    # Parsed before the handlers go in (it changes nothing), so that from the first
    # signal they catch, the record knows which output an interruption leaves alone.
    args = _parser().parse_args(argv)
    args.record = record
    if args.command == "export":
        record.output_dir = args.output
    command = {"export": _cmd_export, "describe": _cmd_describe,
               "check": _cmd_check, "diff": _cmd_diff}
    try:
        with interrupt.raising_on_signals():
            return _run(command[args.command], args)
    except interrupt.Interrupted as e:
        return _interrupted(e, record)


# Where an internal error should go. No URL is configured for this distribution;
# the line names what a useful report holds.
REPORT_HINT = ("this is a bug in export-archive, not in your input: please report it on "
               "the tfx-export-archive issue tracker with the command line, "
               "`export-archive --version` and the traceback (rerun with `export-archive "
               "--traceback ...`)")

# OS errors about a path the user gave (model, config, output, examples), with the
# fix for each. They are the user's to fix, so exit 2 like any other input error.
_PATH_ERRNO_FIXES = {
    errno.EACCES: "give the user running export-archive access to it (chmod/chown), or "
                  "choose another path",
    errno.EPERM: "give the user running export-archive access to it, or choose another "
                 "path",
    errno.EROFS: "choose a path on a writable filesystem",
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a part of the path is a file, not a directory: check the path",
    errno.EISDIR: "the path is a directory where a file is needed: check the path",
    errno.EEXIST: "choose a new path, or remove what is there",
    errno.ENOTEMPTY: "choose a new path, or remove what is there",
    errno.ENAMETOOLONG: "use a shorter path",
    errno.ELOOP: "the path has a symlink loop: check the path",
    errno.EBUSY: "the path is in use (a mount point, or held by another process): "
                 "choose another path",
    errno.ETXTBSY: "the path is in use by a running program: choose another path",
}
# The machine, not the input, ran out of something: exit 1, but one paragraph.
_RESOURCE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM)


def _run(command, args) -> int:
    """Runs a sub-command, mapping every failure to one paragraph and its exit code.

    2: the user's input (InputError and its ConfigError / SourceError, an output
    path the export may not use, an OS error about a path the user gave). 1: the
    machine ran out of space or memory, or an internal error, which is the only
    case that says where to report it (and prints the traceback with --traceback).
    """

    def error(message: str, code: int) -> int:
        if getattr(args, "json", False) and args.command == "check":
            print(json.dumps({"passed": False, "error": message}, indent=2))
        print(f"export-archive: error: {message}", file=sys.stderr)
        return code
    try:
        try:
            return command(args)
        except Exception:
            # A signal that interrupted C code can surface as an unrelated error
            # (e.g. SystemError): then the interruption is what happened.
            interrupt.raise_if_received()
            raise
    except InputError as e:
        return error(str(e), EXIT_USER_ERROR)
    except (OSError, ValueError) as e:
        mapped = _output_error(e)
        if mapped is not None:
            return error(*mapped)
        if isinstance(e, OSError) and (e.errno in _PATH_ERRNO_FIXES
                                       or e.errno in _RESOURCE_ERRNOS):
            return error(_os_error_text(e), EXIT_USER_ERROR
                         if e.errno in _PATH_ERRNO_FIXES else EXIT_INTERNAL_ERROR)
        return _internal_error(e, args)
    except Exception as e:  # pylint: disable=broad-except
        return _internal_error(e, args)


def _output_error(e: BaseException):
    """The writer's own output errors (writer imports TensorFlow: only when loaded)."""
    writer = sys.modules.get("export_archive.writer")
    if writer is None or not isinstance(e, getattr(writer, "OutputError", ())):
        return None
    write_error = getattr(writer, "OutputWriteError", ())
    return str(e), EXIT_INTERNAL_ERROR if isinstance(e, write_error) else EXIT_USER_ERROR


def _os_error_text(e: OSError) -> str:
    where = f" `{e.filename}`" if e.filename else ""
    if e.errno in _RESOURCE_ERRNOS:
        return (f"path{where}: {e.strerror} ({errno.errorcode.get(e.errno, e.errno)}); "
                "nothing was published. fix: free space (or raise the limit) and run again.")
    return (f"path{where}: {e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)}). "
            f"fix: {_PATH_ERRNO_FIXES[e.errno]}.")


def _internal_error(e: BaseException, args) -> int:
    if getattr(args, "traceback", False):
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    summary = " ".join(str(e).split())
    summary = summary if len(summary) <= 300 else summary[:297] + "..."
    print(f"export-archive: internal error: {type(e).__name__}: {summary}\n"
          f"export-archive: {REPORT_HINT}.", file=sys.stderr)
    return EXIT_INTERNAL_ERROR


def _interrupted(e, record) -> int:
    """One line, no traceback: what the signal left behind (see interrupt.py)."""
    record.clean_up()   # the library's finally blocks did this, unless cut short
    if record.published():
        print(f"export-archive: {e.name} received after the export was published: "
              f"{record.output_dir} holds the complete new export.", file=sys.stderr)
        return 0
    where = (f"; nothing was published, {record.output_dir} is unchanged"
             if record.output_dir else "")
    print(f"export-archive: interrupted by {e.name}{where}.", file=sys.stderr)
    return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
