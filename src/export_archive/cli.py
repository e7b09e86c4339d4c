"""The `export-archive` command line: export, check, describe, diff.

    export-archive export --model PATH --config FILE --output DIR [--overwrite]
                          [--baseline DIR]
    export-archive describe DIR [--json]
    export-archive check DIR [--json]
    export-archive diff OLD NEW [--json]

Exit status: 0 ok; 1 an unexpected (internal) failure, with its traceback; 2 a
user error (a bad config, a missing model, an existing output), as one paragraph
without a traceback; 3 the serving check failed or the new model breaks the
baseline's serving contract.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from export_archive.config import ConfigError, ExportConfig

EXIT_USER_ERROR = 2
EXIT_CHECK_FAILED = 3  # the serving check failed, or a breaking contract change
EXIT_STATUS_HELP = ("exit status: 0 ok; 1 internal error (with a traceback); 2 user error "
                    "(bad config, missing model, output exists); 3 the serving check "
                    "failed, or NEW breaks OLD's serving contract")


def _parser() -> argparse.ArgumentParser:
    from export_archive import __version__
    parser = argparse.ArgumentParser(
        prog="export-archive",
        description="Export a trained Keras model as a servable SavedModel, check it, "
                    "or describe a SavedModel's signatures.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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


def _user_error(message: str) -> int:
    print(f"export-archive: error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def _cmd_export(args) -> int:
    from export_archive import writer
    from export_archive.sources import SourceError, resolve_model_path

    try:
        config = ExportConfig.parse(
            args.config if args.config.lstrip().startswith("{") else os.fspath(args.config))
    except ConfigError as e:
        return _user_error(str(e))
    example_builder = None
    if args.schema or args.transform_graph:
        try:
            from export_archive import examples
        except ImportError:
            return _user_error("--schema/--transform-graph need tf_example support, which "
                               "this installation lacks (install the 'tfx' extra).")
        example_builder = examples.ExampleEndpointBuilder(
            schema_path=args.schema, transform_graph_path=args.transform_graph,
            example_files=examples.find_example_files(args.examples) if args.examples else None)
    from export_archive.check import CheckFailed
    from export_archive.contract import BreakingChange
    try:
        result = writer.export(resolve_model_path(args.model), config, args.output,
                               overwrite=args.overwrite, example_builder=example_builder,
                               check=args.check, baseline=args.baseline)
    except (ConfigError, SourceError, writer.OutputExistsError, FileNotFoundError) as e:
        return _user_error(str(e))
    except (CheckFailed, BreakingChange) as e:
        print(f"export-archive: {e}\nNothing was written to {args.output}.", file=sys.stderr)
        return EXIT_CHECK_FAILED
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        print(f"Exported {result.flavor} model to {result.output_dir} "
              f"({result.size_bytes} bytes); serving_default -> {result.serving_default}")
        for e in result.endpoints:
            mode = " (training mode)" if e.training else ""
            print(f"  endpoint {e.name}{mode}: inputs {e.inputs} -> outputs {e.outputs}")
        for name, count in result.variable_collections.items():
            print(f"  variable collection {name}: {count} variables")
        if result.check_passed is None:
            # The API's default; ModelExporter always checks. Say so rather than be silent.
            print("  serving check: not run (pass --check, or add a \"check\" section "
                  "to the config)")
        else:
            print("  serving check: " + ("passed" if result.check_passed else
                                         "FAILED (mode warn, exported anyway)"))
            for c in result.checks:
                if not c["passed"]:
                    print(f"    {c['endpoint'] or '(model)'}: {c['check']}: {c['detail']}")
        print(f"  {result.contract['summary']}")
        for change in result.contract["changes"]:
            print(f"    {change['id']}: {change['old']} -> {change['new']}"
                  f"{' (BREAKING)' if change['breaking'] and not change['allowed'] else ''}")
    return 0


def _cmd_describe(args) -> int:
    from export_archive import describe
    from export_archive.sources import resolve_model_path
    try:
        signatures = describe.describe(resolve_model_path(args.dir))
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
    from export_archive import check
    from export_archive.sources import resolve_model_path

    def error(message):
        if args.json:   # a script reading --json output must get JSON on every path
            print(json.dumps({"passed": False, "error": message}, indent=2))
        return _user_error(message)
    try:
        example_files = None
        if args.examples:
            from export_archive.examples import find_example_files
            example_files = find_example_files(args.examples)
            if not example_files:
                return error(f"--examples {args.examples}: no record files found.")
        report = check.check_saved_model(resolve_model_path(args.dir), example_files)
    except (FileNotFoundError, ValueError) as e:
        return error(str(e))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.format())
    return 0 if report.passed else EXIT_CHECK_FAILED


def _cmd_diff(args) -> int:
    from export_archive import contract
    from export_archive.sources import resolve_model_path
    try:
        from export_archive.config import _check_allow_entry
        for i, entry in enumerate(args.allow):
            _check_allow_entry(f"--allow[{i}]", entry, contract.BREAKING_KINDS,
                               contract.COMPATIBLE_KINDS)
        old, new = (resolve_model_path(d) for d in (args.old, args.new))
        diff = contract.compare(old, new, allow=args.allow, replay=not args.no_replay)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return _user_error(str(e))
    if args.json:
        print(json.dumps(diff.to_json(), indent=2))
    else:
        print(diff.format())
    return EXIT_CHECK_FAILED if diff.breaking else 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    command = {"export": _cmd_export, "describe": _cmd_describe, "check": _cmd_check,
               "diff": _cmd_diff}
    return command[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
