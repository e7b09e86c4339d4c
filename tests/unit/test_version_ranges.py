"""Our version ranges admit what each supported TFX release requires, read from its wheel.

For TFX 1.16 (the pinned lane) and 1.21 (the newest release), the wheel's METADATA
is downloaded once (`pip download --no-deps`, cached under `.cache/version-ranges/`)
and its Requires-Dist read with `packaging`, markers evaluated for the Python that
release runs on in our lanes. For TensorFlow, tensorflow-serving-api, Apache Beam and
kfp, some released version must satisfy both TFX's requirement and ours, and the
version our lane for that TFX installs must satisfy both. tf_keras releases follow
TF's minor version (tf_keras 2.N is built for TF 2.N), so ours must admit the tf_keras
of every TF that TFX admits. Released versions come from `pip index versions`,
cached beside the wheels.

Needs PyPI (these machines reach it); a second run reads the cache.
"""

import email.parser
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile

import pytest

packaging = pytest.importorskip("packaging")
from packaging.requirements import Requirement  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.utils import canonicalize_name  # noqa: E402
from packaging.version import Version  # noqa: E402

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(REPO, ".cache", "version-ranges")
DISTRIBUTION = "tfx-export-archive"
# Our extras that go into a TFX environment, besides the base requirements.
TFX_EXTRAS = ("tfx", "serving", "transform", "kfp")
CHECKED = ("tensorflow", "tensorflow-serving-api", "apache-beam", "kfp")

# TFX release -> (the Python it runs on in our lanes, the lane's constraints file).
# TFX 1.21's `kfp` extra installs kfp only on Python < 3.12, so it is read for 3.11;
# our current lane (3.12, no TFX) is checked for what TFX 1.21 requires of the rest.
RELEASES = {
    "1.16.0": ("3.10", "constraints.txt"),
    "1.21.0": ("3.11", "constraints-current.txt"),
}


def _pip(*args) -> str:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"pip {' '.join(args)} failed:\n{proc.stderr[-2000:]}"
    return proc.stdout


def tfx_metadata(version: str, python: str):
    directory = os.path.join(CACHE, f"tfx-{version}")
    wheels = [f for f in os.listdir(directory) if f.endswith(".whl")] \
        if os.path.isdir(directory) else []
    if not wheels:
        _pip("download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--python-version", python, "-d", directory, f"tfx=={version}")
        wheels = [f for f in os.listdir(directory) if f.endswith(".whl")]
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(os.path.join(directory, wheels[0])) as wheel:
        name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(wheel.read(name).decode())


def released_versions(package: str):
    path = os.path.join(CACHE, f"index-{canonicalize_name(package)}.txt")
    if not os.path.exists(path):
        out = _pip("index", "versions", package)
        os.makedirs(CACHE, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            f.write(out)
        os.replace(path + ".tmp", path)
    text = open(path).read()
    listed = re.search(r"Available versions: (.*)", text).group(1)
    return [Version(v.strip()) for v in listed.split(",")]


def requirements_of(metadata, environment):
    """Package -> SpecifierSet of the Requires-Dist that apply in `environment`."""
    specs = {}
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(environment):
            continue
        name = canonicalize_name(req.name)
        specs[name] = specs.get(name, SpecifierSet()) & req.specifier
    return specs


def our_requirements():
    """Our base requirements and the extras a TFX environment installs, intersected."""
    specs = {}
    for line in importlib.metadata.requires(DISTRIBUTION) or []:
        req = Requirement(line)
        if req.marker is not None and not any(
                req.marker.evaluate({"extra": extra}) for extra in TFX_EXTRAS):
            continue
        name = canonicalize_name(req.name)
        specs[name] = specs.get(name, SpecifierSet()) & req.specifier
    return specs


def lane_versions(constraints: str):
    pins = {}
    for line in open(os.path.join(REPO, constraints)):
        match = re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;]+)", line.strip())
        if match:
            pins[canonicalize_name(match.group(1))] = Version(match.group(3))
    return pins


@pytest.fixture(scope="module")
def ours():
    return our_requirements()


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_our_ranges_admit_what_tfx_requires(release, ours):
    python, constraints = RELEASES[release]
    metadata = tfx_metadata(release, python)
    tfx_specs = requirements_of(metadata, {"extra": "kfp", "python_version": python})
    assert "tfx" in ours and ours["tfx"].contains(release), (
        f"our `tfx` extra ({ours.get('tfx')}) does not admit TFX {release}")
    assert SpecifierSet(metadata["Requires-Python"]).contains(f"{python}.0")
    assert importlib.metadata.metadata(DISTRIBUTION)["Requires-Python"] and SpecifierSet(
        importlib.metadata.metadata(DISTRIBUTION)["Requires-Python"]).contains(f"{python}.0")
    lane = lane_versions(constraints)
    for package in CHECKED:
        name = canonicalize_name(package)
        assert name in tfx_specs, f"TFX {release} no longer requires {package}"
        theirs = tfx_specs[name]
        both = [v for v in released_versions(package)
                if theirs.contains(v) and ours[name].contains(v)]
        assert both, (f"TFX {release} requires {package}{theirs}; ours is "
                      f"{package}{ours[name]}: no released version satisfies both")
        if name in lane and theirs.contains(lane[name]):
            assert ours[name].contains(lane[name]), (
                f"{constraints} pins {package}=={lane[name]}, which TFX {release} admits "
                f"but our range {ours[name]} does not")


@pytest.mark.parametrize("release", sorted(RELEASES))
def test_tf_keras_follows_every_tf_that_tfx_admits(release, ours):
    python, _ = RELEASES[release]
    theirs = requirements_of(tfx_metadata(release, python),
                             {"extra": "kfp", "python_version": python})["tensorflow"]
    minors = sorted({(v.major, v.minor) for v in released_versions("tensorflow")
                     if not v.is_prerelease and theirs.contains(v)
                     and ours["tensorflow"].contains(v)})
    assert minors, f"no TF release satisfies TFX {release}'s {theirs} and ours"
    for major, minor in minors:
        assert ours["tf-keras"].contains(f"{major}.{minor}.0"), (
            f"TFX {release} runs on TF {major}.{minor}, whose Keras 2 is tf_keras "
            f"{major}.{minor}; our tf-keras range {ours['tf-keras']} refuses it")


def test_the_lanes_sit_at_both_ends_of_our_ranges(ours):
    """Every range is tested at both ends: the pinned lane's versions are each range's
    lowest admitted minor version, the current lane's its highest."""
    pinned, current = lane_versions("constraints.txt"), lane_versions("constraints-current.txt")
    for package in ("tensorflow", "keras", "tf-keras", "tensorflow-serving-api",
                    "tensorflow-transform", "tfx-bsl", "kfp"):
        name = canonicalize_name(package)
        admitted = sorted({(v.major, v.minor) for v in released_versions(package)
                           if not v.is_prerelease and ours[name].contains(v)})
        assert (pinned[name].major, pinned[name].minor) == admitted[0], (package, admitted)
        assert (current[name].major, current[name].minor) == admitted[-1], (package, admitted)
