"""The `export-archive` command line: export, check, describe.

    export-archive export --model PATH --config FILE --output DIR [--overwrite]
    export-archive describe DIR [--json]
    export-archive check DIR [--json]

User errors (a bad config, a missing model, an existing output) print one
paragraph and exit with status 2; no traceback. Unexpected failures keep their
traceback and exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from export_archive.config import ConfigError, ExportConfig

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export-archive",
        description="Export a trained Keras model as a servable SavedModel, check it, "
                    "or describe a SavedModel's signatures.")
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
    exp.add_argument("--json", action="store_true", help="print the result as JSON")

    desc = sub.add_parser("describe", help="list a SavedModel's signatures")
    desc.add_argument("dir", help="SavedModel directory")
    desc.add_argument("--json", action="store_true", help="print JSON")

    chk = sub.add_parser("check", help="check a SavedModel the way TF Serving loads it")
    chk.add_argument("dir", help="SavedModel directory")
    chk.add_argument("--examples", help="tf.Example TFRecords to send to string (tf.Example) "
                                        "inputs: a file glob, a directory, or an Examples "
                                        "artifact dir")
    chk.add_argument("--json", action="store_true", help="print JSON")
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
    try:
        result = writer.export(resolve_model_path(args.model), config, args.output,
                               overwrite=args.overwrite, example_builder=example_builder,
                               check=args.check)
    except (ConfigError, SourceError, writer.OutputExistsError, FileNotFoundError) as e:
        return _user_error(str(e))
    except CheckFailed as e:
        print(f"export-archive: {e}\nNothing was written to {args.output}.", file=sys.stderr)
        return 1
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
        if result.check_passed is not None:
            print("  serving check: " + ("passed" if result.check_passed else
                                         "FAILED (mode warn, exported anyway)"))
            for c in result.checks:
                if not c["passed"]:
                    print(f"    {c['endpoint'] or '(model)'}: {c['check']}: {c['detail']}")
    return 0


def _cmd_describe(args) -> int:
    from export_archive import describe
    from export_archive.sources import resolve_model_path
    try:
        signatures = describe.describe(resolve_model_path(args.dir))
    except (FileNotFoundError, ValueError) as e:
        return _user_error(str(e))
    if args.json:
        print(json.dumps([s.to_json() for s in signatures], indent=2))
    else:
        print(describe.format_signatures(signatures))
    return 0


def _cmd_check(args) -> int:
    from export_archive import check
    from export_archive.sources import resolve_model_path
    try:
        example_files = None
        if args.examples:
            from export_archive.examples import find_example_files
            example_files = find_example_files(args.examples)
            if not example_files:
                return _user_error(f"--examples {args.examples}: no record files found.")
        report = check.check_saved_model(resolve_model_path(args.dir), example_files)
    except FileNotFoundError as e:
        return _user_error(str(e))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.format())
    return 0 if report.passed else 1


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    command = {"export": _cmd_export, "describe": _cmd_describe, "check": _cmd_check}
    return command[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
