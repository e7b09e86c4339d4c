"""The export report: one `ExportResult` rendered as JSON, Markdown and HTML."""

from __future__ import annotations

import html
import json
import os
from typing import Dict

import tensorflow as tf

from export_archive import contract
from export_archive.writer import ExportResult


def to_markdown(result: ExportResult) -> str:
    lines = [
        "# Export report", "",
        f"- SavedModel: `{result.output_dir}`",
        f"- Source: {result.flavor}",
        f"- serving_default: `{result.serving_default}`",
        f"- Size: {result.size_bytes:,} bytes", "",
        "| endpoint | kind | method | inputs | outputs | serving_default |",
        "|---|---|---|---|---|---|",
    ]
    for e in result.endpoints:
        kind = e.kind + (" (training)" if e.training else "")
        lines.append(f"| `{e.name}` | {kind} | {e.method_name.rsplit('/', 1)[-1]} | "
                     f"{_specs(e.inputs)} | {_specs(e.outputs)} | "
                     f"{'yes' if e.is_serving_default else ''} |")
    if result.variable_collections:
        lines += ["", "| variable collection | variables |", "|---|---|"]
        lines += [f"| `{n}` | {c} |" for n, c in result.variable_collections.items()]
    if result.checks:
        lines += ["", "| check | endpoint | passed | detail |", "|---|---|---|---|"]
        for c in result.checks:
            lines.append(f"| {c.get('check', '')} | {c.get('endpoint', '')} | "
                         f"{'yes' if c.get('passed') else 'NO'} | {c.get('detail', '')} |")
    lines += ["", "## Serving contract", "", _contract_summary(result)]
    changes = (result.contract or {}).get("changes", [])
    if changes:
        lines += ["", "| change | where | before | after | verdict |", "|---|---|---|---|---|"]
        for c in changes:
            lines.append(f"| {c['kind']} | `{c['path']}` | {_cell(c['old'])} | "
                         f"{_cell(c['new'])} | {_verdict(c)} |")
    return "\n".join(lines) + "\n"


def _contract_summary(result: ExportResult) -> str:
    # An ExportResult made without `export` (or before the contract guard) has none.
    return (result.contract or {}).get("summary", contract.NO_BASELINE)


def _verdict(change) -> str:
    if not change["breaking"]:
        return "compatible"
    return "breaking (allowed)" if change["allowed"] else "**BREAKING**"


def _cell(text: str) -> str:
    return f"`{text}`" if text else ""


def _specs(specs: Dict[str, str]) -> str:
    return "<br>".join(f"`{k}`: {v}" for k, v in specs.items())


def to_html(result: ExportResult) -> str:
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            e.name, e.kind + (" (training)" if e.training else ""),
            e.method_name, _plain(e.inputs), _plain(e.outputs),
            "yes" if e.is_serving_default else "")) + "</tr>"
        for e in result.endpoints)
    checks = "".join(
        f"<tr><td>{html.escape(str(c.get('check', '')))}</td>"
        f"<td>{html.escape(str(c.get('endpoint', '')))}</td>"
        f"<td>{'yes' if c.get('passed') else 'NO'}</td>"
        f"<td>{html.escape(str(c.get('detail', '')))}</td></tr>" for c in result.checks)
    changes = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            c["kind"], c["path"], c["old"], c["new"], _verdict(c).strip("*"))) + "</tr>"
        for c in (result.contract or {}).get("changes", []))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Export report</title>"
        "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px}"
        "table{border-collapse:collapse}</style></head><body>"
        f"<h1>Export report</h1><p>SavedModel: <code>{html.escape(result.output_dir)}</code>"
        f"<br>Source: {html.escape(result.flavor)}<br>serving_default: "
        f"<code>{html.escape(result.serving_default)}</code><br>Size: {result.size_bytes:,} bytes</p>"
        "<table><tr><th>endpoint</th><th>kind</th><th>method</th><th>inputs</th>"
        f"<th>outputs</th><th>serving_default</th></tr>{rows}</table>"
        + (f"<h2>Checks</h2><table><tr><th>check</th><th>endpoint</th><th>passed</th>"
           f"<th>detail</th></tr>{checks}</table>" if checks else "")
        + f"<h2>Serving contract</h2><p>{html.escape(_contract_summary(result))}</p>"
        + ("<table><tr><th>change</th><th>where</th><th>before</th><th>after</th>"
           f"<th>verdict</th></tr>{changes}</table>" if changes else "")
        + "</body></html>\n")


def _plain(specs: Dict[str, str]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in specs.items())


def write_report(result: ExportResult, directory: str, json_name: str = "report.json",
                 markdown_name: str = "report.md", html_name: str = "report.html") -> None:
    tf.io.gfile.makedirs(directory)
    for name, text in ((json_name, json.dumps(result.to_json(), indent=2)),
                       (markdown_name, to_markdown(result)), (html_name, to_html(result))):
        with tf.io.gfile.GFile(os.path.join(directory, name), "w") as f:
            f.write(text)
