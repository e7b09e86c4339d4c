"""deploy/: the component image's Dockerfile, the Vertex submission script, the TF
Serving manifests. Static checks only (no Docker, cluster or cloud here), and no
TensorFlow: the Dockerfile is parsed by a small parser below, the manifests with
PyYAML, and the submission script runs as a subprocess for its argument handling
(its dry run compiles the TFX pipeline: tests/integration/test_kfp_v2_compile.py).
"""

import fnmatch
import os
import re
import shlex
import subprocess
import sys
from typing import Dict, List, NamedTuple

import pytest
import yaml

from export_archive.pipelines import kubeflow_v2_runner as runner

pytestmark = pytest.mark.unit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPO, "deploy")
DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
K8S = os.path.join(DEPLOY, "k8s")
SUBMIT = os.path.join(DEPLOY, "vertex_submit.py")

INSTRUCTIONS = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM",
                "HEALTHCHECK", "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL",
                "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}


def pins() -> Dict[str, str]:
    with open(os.path.join(REPO, "constraints.txt")) as f:
        return dict(line.strip().split("==", 1) for line in f
                    if "==" in line and not line.startswith("#"))


# --- a minimal Dockerfile parser ---------------------------------------------------

class Instruction(NamedTuple):
    line: int
    name: str
    args: str

    @property
    def words(self) -> List[str]:
        return shlex.split(self.args)


def parse_dockerfile(text: str) -> List[Instruction]:
    """Instructions with their first line number; comments dropped, `\\` lines joined."""
    out, pending, start = [], "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are removed too
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        full, pending = pending + line, ""
        name, _, args = full.partition(" ")
        out.append(Instruction(start, name.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


class Stage(NamedTuple):
    image: str
    name: str
    instructions: List[Instruction]


def global_args(instructions: List[Instruction]) -> Dict[str, str]:
    """The ARG defaults declared before the first FROM: the only ARGs a FROM line
    can use (Docker's rule), overridable with `--build-arg NAME=...`."""
    args = {}
    for ins in instructions:
        if ins.name == "FROM":
            break
        if ins.name == "ARG":
            name, _, default = ins.args.partition("=")
            args[name] = default
    return args


def stages(instructions: List[Instruction]) -> List[Stage]:
    result = []
    args = global_args(instructions)
    for ins in instructions:
        if ins.name == "FROM":
            words = [re.sub(r"\$\{(\w+)\}|\$(\w+)",
                            lambda m: args[m.group(1) or m.group(2)], w) for w in ins.words]
            assert len(words) in (1, 3) and (len(words) == 1 or words[1].upper() == "AS"), \
                f"line {ins.line}: FROM image [AS name], got {ins.args!r}"
            result.append(Stage(words[0], words[2] if len(words) == 3 else "", []))
        else:
            assert result or ins.name == "ARG", f"line {ins.line}: {ins.name} before FROM"
            if result:   # global ARGs (before the first FROM) belong to no stage
                result[-1].instructions.append(ins)
    return result


def copy_parts(ins: Instruction):
    words = ins.words
    flags = {w.split("=", 1)[0]: w.split("=", 1)[1] if "=" in w else ""
             for w in words if w.startswith("--")}
    paths = [w for w in words if not w.startswith("--")]
    assert len(paths) >= 2, f"line {ins.line}: COPY needs a source and a destination"
    return flags, paths[:-1], paths[-1]


@pytest.fixture(scope="module")
def dockerfile():
    with open(DOCKERFILE) as f:
        return parse_dockerfile(f.read())


def dockerignore_patterns():
    with open(DOCKERFILE + ".dockerignore") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def test_parser_on_a_sample():
    parsed = parse_dockerfile("# c\nFROM a:1 AS x\n\nRUN one \\\n  # inner\n  two\nCOPY a b\n")
    assert [(i.line, i.name, i.args) for i in parsed] == [
        (2, "FROM", "a:1 AS x"), (4, "RUN", "one two"), (7, "COPY", "a b")]


def test_instructions_are_valid(dockerfile):
    assert dockerfile, "empty Dockerfile"
    for ins in dockerfile:
        assert ins.name in INSTRUCTIONS, f"line {ins.line}: unknown instruction {ins.name}"
        assert ins.args, f"line {ins.line}: {ins.name} without arguments"


def test_stages_are_the_pinned_tfx_and_serving_images(dockerfile):
    versions = pins()
    found = stages(dockerfile)
    assert [s.image for s in found] == [
        f"tensorflow/serving:{versions['tensorflow-serving-api']}",
        f"tensorflow/tfx:{versions['tfx']}"]
    assert found[0].name == "serving"
    names = [s.name for s in found if s.name]
    assert len(names) == len(set(names))


def test_model_server_comes_from_the_serving_stage(dockerfile):
    found = stages(dockerfile)
    earlier = {s.name for s in found[:-1]}
    copies = [copy_parts(i) for i in found[-1].instructions if i.name == "COPY"]
    from_stage = [(flags["--from"], sources, dest) for flags, sources, dest in copies
                  if "--from" in flags]
    assert from_stage == [("serving", ["/usr/bin/tensorflow_model_server"],
                           "/usr/bin/tensorflow_model_server")]
    assert all(name in earlier for name, _, _ in from_stage)
    runs = [i.args for i in found[-1].instructions if i.name == "RUN"]
    assert "tensorflow_model_server --version" in runs


def test_context_copies_exist_and_are_not_ignored(dockerfile):
    ignored = dockerignore_patterns()
    sources = [src for ins in dockerfile if ins.name in ("COPY", "ADD")
               for flags, srcs, _ in [copy_parts(ins)] if "--from" not in flags
               for src in srcs]
    assert sources
    for src in sources:
        assert os.path.exists(os.path.join(REPO, src)), f"COPY source {src!r} not in the repo"
        top = src.strip("./").split("/")[0]
        assert not any(fnmatch.fnmatch(top, p) or fnmatch.fnmatch(src, p) for p in ignored), \
            f"COPY source {src!r} is excluded by Dockerfile.dockerignore"


def test_package_installed_under_the_constraints(dockerfile):
    final = stages(dockerfile)[-1].instructions
    copied = [src for i in final if i.name == "COPY"
              for flags, srcs, _ in [copy_parts(i)] if "--from" not in flags for src in srcs]
    install = next(i for i in final if i.name == "RUN" and "pip install" in i.args)
    assert "-c constraints.txt" in install.args and '".[tfx]"' in install.args
    # Everything setup.py reads or packages is in the image before pip runs.
    before = [src for i in final if i.name == "COPY" and i.line < install.line
              for flags, srcs, _ in [copy_parts(i)] if "--from" not in flags for src in srcs]
    for needed in ("setup.py", "README.md", "constraints.txt", "src", "components",
                   "pipelines"):
        assert needed in before, f"{needed} is not copied before `pip install`"
    assert copied


def test_image_has_the_runner_data_root(dockerfile):
    copies = [copy_parts(i) for i in dockerfile if i.name == "COPY"]
    assert (["pipelines/data/penguins"], runner.IMAGE_DATA_ROOT) in [
        (srcs, dest) for flags, srcs, dest in copies if "--from" not in flags]


def test_base_images_are_build_args(dockerfile):
    # A FROM names its image through an ARG, so a mirror of the same versions
    # can be used with --build-arg; the defaults are the pinned images.
    froms = [i.words[0] for i in dockerfile if i.name == "FROM"]
    assert all(re.fullmatch(r"\$\{\w+\}", image) for image in froms), froms
    assert set(global_args(dockerfile)) == {"SERVING_IMAGE", "TFX_IMAGE"}


# --- the component image is a parameter everywhere ---------------------------------

COMPONENT_YAML = os.path.join(REPO, "components", "kfp", "model_exporter_component.yaml")


def test_committed_component_yaml_says_its_image_must_be_replaced():
    with open(COMPONENT_YAML) as f:
        text = f.read()
    (executor,) = yaml.safe_load(text)["deploymentSpec"]["executors"].values()
    image = executor["container"]["image"]
    # KFP's own header: the description `load_component_from_file` shows users.
    header = text.split("# Inputs:")[0]
    description = " ".join(line.lstrip("#").strip() for line in header.splitlines()
                           if line.startswith("#"))
    assert "Description:" in description
    assert image in description and "must be replaced" in description
    # The placeholder is a bare local tag: no registry host, so no cluster pulls it.
    assert "/" not in image


def test_runner_requires_the_image(capsys):
    with pytest.raises(SystemExit) as exit_info:
        runner.parse_args(["--pipeline-root", "gs://b/r"])
    assert exit_info.value.code == 2
    assert "--image" in capsys.readouterr().err
    image = "europe-docker.pkg.dev/p/r/tfx-export-archive:1"
    assert runner.parse_args(["--image", image, "--pipeline-root", "gs://b/r"]).image == image


def test_dockerfile_recipe_tags_a_registry_image():
    with open(DOCKERFILE) as f:
        text = f.read()
    assert "docker build -f deploy/Dockerfile -t $IMAGE ." in text
    assert "docker push $IMAGE" in text
    assert "IMAGE=REGION-docker.pkg.dev/PROJECT/REPO/tfx-export-archive:" in text


def test_serving_image_is_a_kustomize_parameter(manifests):
    (entry,) = manifests["Kustomization"]["images"]
    name, _, tag = serving_container(manifests)["image"].rpartition(":")
    # `kustomize edit set image tensorflow/serving=...` rewrites this entry.
    assert entry["name"] == name
    assert (entry["newName"], entry["newTag"]) == (name, tag)


# --- Kubernetes manifests ----------------------------------------------------------

@pytest.fixture(scope="module")
def manifests():
    docs = {}
    for name in sorted(os.listdir(K8S)):
        if name.endswith((".yaml", ".yml")):
            with open(os.path.join(K8S, name)) as f:
                for doc in yaml.safe_load_all(f):
                    if doc:
                        assert doc["kind"] not in docs, f"two {doc['kind']} manifests"
                        docs[doc["kind"]] = dict(doc, _file=name)
    return docs


def test_manifest_kinds(manifests):
    assert set(manifests) == {"ConfigMap", "Deployment", "Service", "Kustomization"}
    for kind in ("ConfigMap", "Deployment", "Service"):
        assert manifests[kind]["apiVersion"] == ("apps/v1" if kind == "Deployment" else "v1")
    files = {m["_file"] for k, m in manifests.items() if k != "Kustomization"}
    assert sorted(manifests["Kustomization"]["resources"]) == sorted(files)


def serving_container(manifests):
    (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def flag_values(args: List[str]) -> Dict[str, str]:
    return dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)


def test_service_selects_the_deployment(manifests):
    deployment, service = manifests["Deployment"], manifests["Service"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    match = deployment["spec"]["selector"]["matchLabels"]
    assert match.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_ports_line_up(manifests):
    container = serving_container(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    flags = flag_values(container["args"])
    assert int(flags["port"]) == ports["grpc"]
    assert int(flags["rest_api_port"]) == ports["http"]
    for port in manifests["Service"]["spec"]["ports"]:
        target = port["targetPort"]
        assert (target in ports) if isinstance(target, str) else (target in ports.values())
        assert port["port"] == ports[port["name"]]
    assert container["readinessProbe"]["httpGet"]["port"] in ("http", ports["http"])
    assert container["livenessProbe"]["tcpSocket"]["port"] in ("grpc", ports["grpc"])


def test_model_name_and_path_are_consistent(manifests):
    container = serving_container(manifests)
    data = manifests["ConfigMap"]["data"]
    env = {}
    for var in container["env"]:
        ref = var["valueFrom"]["configMapKeyRef"]
        assert ref["name"] == manifests["ConfigMap"]["metadata"]["name"]
        env[var["name"]] = data[ref["key"]]
    flags = flag_values(container["args"])

    def expand(value):   # Kubernetes expands $(VAR) in args from the container's env
        return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)

    model_name = expand(flags["model_name"])
    assert model_name == data["MODEL_NAME"]
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{model_name}"
    base_path = expand(flags["model_base_path"])
    # Where kubeflow_v2_runner's Pusher pushes: <pipeline-root>/serving_model.
    assert base_path.startswith("gs://")
    assert base_path.rstrip("/").endswith("/" + runner.SERVING_MODEL_SUBDIR)


def test_serving_image_matches_the_component_image_server(manifests, dockerfile):
    serving_stage = stages(dockerfile)[0].image
    assert serving_container(manifests)["image"] == serving_stage
    assert serving_container(manifests)["command"] == ["/usr/bin/tensorflow_model_server"]


# --- vertex_submit.py (argument handling; the dry run is an integration test) -------------

def run_submit(*args):
    return subprocess.run([sys.executable, SUBMIT, *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_submit_help_lists_the_flags():
    proc = run_submit("--help")
    assert proc.returncode == 0, proc.stderr
    for flag in ("--project", "--region", "--pipeline-root", "--image", "--service-account",
                 "--dry-run", "--template", "--vertex-endpoint", "--serving-image"):
        assert flag in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--pipeline-root", "/local/dir", "--image", "i"], "must be a gs:// path"),
    (["--pipeline-root", "gs://b/r"], "--image is required"),
    (["--pipeline-root", "gs://b/r", "--image", "i", "--serving-image", "s"],
     "--serving-image applies only with --vertex-endpoint"),
    (["--pipeline-root", "gs://b/r", "--template", "t.json", "--vertex-endpoint", "e"],
     "--vertex-endpoint is compiled into the template"),
])
def test_submit_refuses_bad_flags_before_compiling(args, message):
    proc = run_submit("--project", "p", "--region", "us-central1", "--dry-run", *args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_submit_script_imports_nothing_heavy():
    code = ("import runpy, sys; sys.argv = ['vertex_submit', '--help']\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('tensorflow', 'tfx', 'google.cloud.aiplatform', 'kfp') "
            "if m in sys.modules))" % SUBMIT)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
