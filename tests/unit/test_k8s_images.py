"""The Containerfiles build what the manifests run: every path they copy exists in the repo, every
base image is pinned, each image runs as non-root, each manifest image is one of them (or a
pinned third-party image named here), and the Python images install exactly the locked versions."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.fixtures.k8s import OVERLAYS, REPO, native_workloads, pod_template, rendered

IMAGES = REPO / "k8s" / "images"
CONTAINERFILES = sorted(IMAGES.glob("*/Containerfile"))
#: Images the manifests use that this repo does not build, each pinned, with why it is ours to run.
THIRD_PARTY = {
    "danielqsj/kafka-exporter": "consumer lag and topic offsets of MSK (observability/)",
    "public.ecr.aws/aws-cli/aws-cli": "submits the EMR Serverless job runs (batch/)",
}

sys.path.insert(0, str(IMAGES))
import requirements as image_requirements  # noqa: E402  (k8s/images/requirements.py)


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _title(path: Path) -> str:
    for word, rest in _instructions(path):
        if word == "LABEL":
            match = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', rest)
            if match:
                return match.group(1)
    raise AssertionError(f"{path}: no org.opencontainers.image.title label")


def test_there_is_one_containerfile_per_image():
    assert {p.parent.name for p in CONTAINERFILES} == {"gateway", "stats-api", "flink-pipeline", "kafka-connect"}
    assert {_title(p) for p in CONTAINERFILES} == {f"imgstream/{p.parent.name}" for p in CONTAINERFILES}


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.parent.name)
def test_every_copied_path_exists(path: Path):
    copies = 0
    for word, rest in _instructions(path):
        if word not in ("COPY", "ADD"):
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        if "--from=" in rest or args[0].startswith(("http://", "https://")):
            continue  # from another build stage, or a download
        for source in args[:-1]:
            copies += 1
            assert (REPO / source).exists(), f"{path.relative_to(REPO)}: COPY {source} does not exist"
    assert copies >= 1


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.parent.name)
def test_base_images_are_pinned_and_the_image_runs_as_non_root(path: Path):
    instructions = _instructions(path)
    stages = set()
    for word, rest in instructions:
        if word == "FROM":
            image, *alias = rest.split()
            stages |= {alias[-1]} if alias else set()
            tag = image.rpartition(":")[2] if ":" in image.rsplit("/", 1)[-1] else ""
            assert tag and tag != "latest" and re.search(r"\d", tag), f"{path.name}: unpinned base {image}"
    users = [rest for word, rest in instructions if word == "USER"]
    assert users, f"{path}: no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), f"{path}: the final image runs as {users[-1]}"


def _manifest_images() -> set[str]:
    found = set()
    for overlay in OVERLAYS:
        docs = rendered(overlay)
        for workload in native_workloads(docs):
            found |= {c["image"] for c in pod_template(workload)["spec"]["containers"]}
        found |= {d["spec"]["image"] for d in docs if d["kind"] in ("FlinkDeployment", "KafkaConnect")}
    return found


def _repository(image: str) -> str:
    """An image reference without tag and without an ECR registry host."""
    name = image.rsplit(":", 1)[0]
    return re.sub(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com/", "", name)


def test_each_manifest_image_matches_one_containerfile():
    built = {_title(p) for p in CONTAINERFILES}
    used_built = set()
    for image in _manifest_images():
        repository = _repository(image)
        if repository in THIRD_PARTY:
            continue
        assert repository in built, f"{image}: no Containerfile builds {repository} (and it is not a listed third-party image)"
        used_built.add(repository)
    assert used_built == built, f"Containerfiles no manifest runs: {built - used_built}"


@pytest.mark.parametrize("image", ["gateway", "stats-api", "flink-pipeline"])
def test_python_images_install_the_locked_versions(image):
    pins = image_requirements.locked()
    lines = [line for line in (IMAGES / image / "requirements.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines
    for line in lines:
        name, version = line.split("==")
        assert pins.get(image_requirements.normalize(name)) == version, f"{image}: {line} differs from requirements.txt"
    text = (IMAGES / image / "Containerfile").read_text()
    assert f"k8s/images/{image}/requirements.txt" in text and "--no-deps" in text


def test_python_image_requirements_are_fresh():
    assert image_requirements.main(["--check"]) == 0, "run .venv/bin/python k8s/images/requirements.py"
