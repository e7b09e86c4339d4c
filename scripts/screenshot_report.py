"""Screenshot an export report in headless Chromium and check its verdict shows.

    .venv/bin/python scripts/screenshot_report.py                # example report
    .venv/bin/python scripts/screenshot_report.py --html runs/.../report/5/report.html

Without --html, it exports a small multi-input model with a tf_example, a
raw_features and a features endpoint (serving check on, so the call examples come
from real warmup requests) and renders its report. It then

1. dumps the DOM Chromium built (``--dump-dom``) and checks that the first element
   of <body> is the verdict heading (``<h1 id="verdict">``) and what it says;
2. takes a screenshot (default docs/report_screenshot.png) and checks it is not
   blank and that the verdict banner's colour fills the top of the page: the
   verdict is what a reader sees without scrolling.

Exit status: 0 ok; 1 a check failed; 2 no Chromium (install the Debian package
`chromium`, or pass --chromium PATH).
"""

import argparse
import html.parser
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPO, "docs", "report_screenshot.png")
WINDOW = (1280, 1700)
# Flags for a sandbox-less container run that touches no network or profile.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--hide-scrollbars"]
# The verdict banner's background per status (templates/report.html.j2).
BANNER_COLOURS = {"ok": (0xe6, 0xf4, 0xea), "warning": (0xfe, 0xf7, 0xe0),
                  "stopped": (0xfc, 0xe8, 0xe6)}
VERDICT_PREFIXES = ("Exported", "Not published")


def find_chromium(explicit=None):
    for candidate in ([explicit] if explicit else []) + ["/usr/bin/chromium",
                                                         "chromium", "chromium-browser"]:
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    return None


def example_report(directory: str) -> str:
    """Exports the example model and writes its report; returns report.html's path."""
    sys.path.insert(0, os.path.join(REPO, "tests"))   # the tests' schema helpers
    import keras

    import export_archive
    from export_archive import report
    from export_archive.examples import ExampleEndpointBuilder
    from helpers import tfx_fixtures as fx
    schema = fx.write_schema(os.path.join(directory, "schema"), fx.MIXED_SCHEMA)
    inputs = {name: keras.Input((1,), name=name) for name in fx.MIXED_FEATURES}
    h = keras.layers.Concatenate()([inputs[n] for n in fx.MIXED_FEATURES])
    model = keras.Model(inputs, keras.layers.Dense(2)(h))
    config = {"endpoints": [
        {"name": "serving_default", "kind": "tf_example", "exclude_features": ["label"]},
        {"name": "serve_raw", "kind": "raw_features", "exclude_features": ["label"]},
        {"name": "serve_features"}],
        "variable_collections": [{"name": "weights", "source": "trainable"}]}
    result = export_archive.export(model, config, os.path.join(directory, "model"),
                                   check=True,
                                   example_builder=ExampleEndpointBuilder(schema_path=schema))
    report.write_report(result, os.path.join(directory, "report"), config=config,
                        source_uri="gs://my-bucket/pipeline/Trainer/model/7")
    return os.path.join(directory, "report", "report.html")


class FirstElement(html.parser.HTMLParser):
    """The first element inside <body>: `first` = (tag, id), `text` = its text."""

    def __init__(self, dom: str):
        super().__init__(convert_charrefs=True)
        self.first, self.text, self._in_body, self._open = None, "", False, False
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self._in_body = True
        elif self._in_body and self.first is None:
            self.first, self._open = (tag, dict(attrs).get("id")), True

    def handle_endtag(self, tag):
        if self.first is not None and tag == self.first[0]:
            self._open = False

    def handle_data(self, data):
        if self._open:
            self.text += data


def check_dom(dom: str):
    """(problems, verdict text) of the DOM Chromium built."""
    parsed = FirstElement(dom)
    if parsed.first is None:
        return ["the page has no element in <body>"], ""
    text = parsed.text.strip()
    problems = []
    if parsed.first != ("h1", "verdict"):
        problems.append(f"the first element of <body> is <{parsed.first[0]} "
                        f"id={parsed.first[1]!r}>, not the verdict <h1 id='verdict'>")
    if not text.startswith(VERDICT_PREFIXES):
        problems.append(f"the verdict reads {text!r}; expected it to start with one of "
                        f"{VERDICT_PREFIXES}")
    return problems, text


def check_png(path: str):
    from PIL import Image
    image = Image.open(path).convert("RGB")
    problems = []
    if image.size != WINDOW:
        problems.append(f"screenshot is {image.size}, expected {WINDOW}")
    colours = image.getcolors(maxcolors=1 << 16)
    if colours is not None and len(colours) < 16:
        problems.append(f"screenshot is (nearly) blank: {len(colours)} colours")
    top = image.crop((0, 0, image.size[0], 160))
    banner = sum(count for count, rgb in (top.getcolors(maxcolors=1 << 16) or [])
                 if rgb in BANNER_COLOURS.values())
    # The banner is a full-width heading with padding: far more than 5% of the band.
    if banner < 0.05 * top.size[0] * top.size[1]:
        problems.append("the verdict banner's colour does not fill the top of the page "
                        f"({banner} pixels in the top 160 rows)")
    return problems


def run(chromium: str, html_path: str, output: str):
    url = "file://" + os.path.abspath(html_path)
    size = f"--window-size={WINDOW[0]},{WINDOW[1]}"
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        flags = CHROMIUM_FLAGS + [f"--user-data-dir={profile}", size]
        dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True,
                             text=True, timeout=180, check=True).stdout
        # Written beside the output and renamed: a failed run leaves the old PNG.
        staging = output + ".tmp.png"
        subprocess.run([chromium, *flags, f"--screenshot={staging}", url],
                       capture_output=True, timeout=180, check=True)
    problems, verdict = check_dom(dom)
    problems += check_png(staging)
    if problems:
        os.remove(staging)
        return problems, verdict
    os.replace(staging, output)
    return [], verdict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--html", help="report.html to screenshot (default: an example)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="PNG to write")
    parser.add_argument("--chromium", help="Chromium binary (default: /usr/bin/chromium)")
    args = parser.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("screenshot_report: no Chromium found (tried /usr/bin/chromium, chromium, "
              "chromium-browser). Install it (Debian: apt-get install -y chromium) or pass "
              "--chromium PATH.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="report-example-") as tmp:
        html_path = args.html or example_report(tmp)
        problems, verdict = run(chromium, html_path, args.output)
    if problems:
        print("screenshot_report: FAILED\n" + "\n".join(f"- {p}" for p in problems),
              file=sys.stderr)
        return 1
    print(f"{args.output}: verdict shown first: {verdict!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
