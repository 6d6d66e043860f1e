"""Offline validation of the production manifests: render each overlay, check every resource
against Kubernetes 1.33's strict core schemas and the CRD schemas in ``k8s/schemas/``.

    .venv/bin/python k8s/validate.py            # both overlays; exit 1 on any problem
    .venv/bin/python k8s/validate.py --json     # one JSON summary line per overlay (for tests)

No cluster is needed. Tools: ``kubectl kustomize`` (rendering) and kubeconform v0.8.0
(``make deps`` installs it into ``.stack/bin``). Core schemas come from the PyPI package
``kubernetes-validate`` (pinned in requirements.txt), which ships strict schemas per Kubernetes
version whose ``$ref``s point at an absolute ``/api/_definitions.json``; kubeconform resolves refs
relative to the schema file, so they are rewritten once into ``.stack/k8s-schemas/`` (refs made
relative, the top-level ``$id`` removed so it does not override the file's own location).

Zero tolerance: an invalid resource, an error (e.g. a resource with no schema) or a skipped one
all fail the run; ``-ignore-missing-schemas`` is never passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OVERLAYS = ("dev", "prod")
#: The EKS version the manifests target (EKS 1.33 is in standard support through mid 2026+).
KUBERNETES_VERSION = "1.33.0"
CRD_SCHEMAS = REPO / "k8s" / "schemas"
#: Where the rewritten core schemas go (ignored; rebuilt when kubernetes-validate changes).
SCHEMA_CACHE = REPO / ".stack" / "k8s-schemas"
KUBECONFORM_VERSION = "v0.8.0"


@dataclass
class Summary:
    """What kubeconform said about one rendered overlay."""

    overlay: str
    resources: int = 0
    valid: int = 0
    invalid: int = 0
    errors: int = 0
    skipped: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.resources > 0 and self.invalid == self.errors == self.skipped == 0 and not self.problems


def kubeconform_binary() -> Path:
    """``$KUBECONFORM`` if set, else ``.stack/bin/kubeconform`` (installed by ``make deps``)."""
    path = Path(os.environ.get("KUBECONFORM", REPO / ".stack" / "bin" / "kubeconform"))
    if not path.is_file():
        raise SystemExit(f"kubeconform not found at {path}: run `make deps` "
                         f"(go install github.com/yannh/kubeconform/cmd/kubeconform@{KUBECONFORM_VERSION})")
    return path


def core_schema_dir(version: str = KUBERNETES_VERSION, cache: Path = SCHEMA_CACHE) -> Path:
    """The strict core schemas of ``version``, rewritten for kubeconform; returns the folder that
    holds ``v<version>-standalone-strict/`` (kubeconform's default layout)."""
    import kubernetes_validate  # pinned in requirements.txt; imported here only (a tool, not the library)
    from importlib.metadata import version as dist_version

    source = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{version}-local-strict"
    if not source.is_dir():
        raise SystemExit(f"kubernetes-validate {dist_version('kubernetes-validate')} has no schemas for {version}")
    root = cache / f"kubernetes-validate-{dist_version('kubernetes-validate')}"
    target = root / f"v{version}-standalone-strict"
    marker = target / ".complete"
    if marker.exists():
        return root
    target.mkdir(parents=True, exist_ok=True)
    for path in source.glob("*.json"):
        text = path.read_text().replace('"/api/_definitions.json#', '"_definitions.json#')
        schema = json.loads(text)
        schema.pop("$id", None)
        (target / path.name).write_text(json.dumps(schema))
    marker.write_text("")
    return root


def render(overlay: str) -> str:
    """``kubectl kustomize k8s/overlays/<overlay>``; raises with kustomize's message on failure."""
    done = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"kubectl kustomize {overlay} failed:\n{done.stderr}")
    return done.stdout


def kubeconform(manifests: str, core_root: Path, overlay: str = "-") -> Summary:
    """Validate rendered YAML; every resource must have a schema and pass it in strict mode."""
    args = [str(kubeconform_binary()), "-strict", "-summary", "-output", "json",
            "-kubernetes-version", KUBERNETES_VERSION,
            "-schema-location",
            f"{core_root}/{{{{ .NormalizedKubernetesVersion }}}}-standalone{{{{ .StrictSuffix }}}}/"
            "{{ .ResourceKind }}{{ .KindSuffix }}.json",
            "-schema-location",
            f"{CRD_SCHEMAS}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json",
            "-"]
    done = subprocess.run(args, input=manifests, capture_output=True, text=True, check=False)
    summary = Summary(overlay=overlay)
    try:
        report = json.loads(done.stdout)
    except ValueError:
        summary.problems.append(f"kubeconform gave no JSON (exit {done.returncode}): {done.stderr or done.stdout}")
        return summary
    for resource in report.get("resources", []):
        status = resource.get("status", "")
        summary.problems.append(f"{resource.get('kind')}/{resource.get('name')}: {status}: {resource.get('msg')}")
    counts = report.get("summary", {})
    summary.valid = counts.get("valid", 0)
    summary.invalid = counts.get("invalid", 0)
    summary.errors = counts.get("errors", 0)
    summary.skipped = counts.get("skipped", 0)
    summary.resources = summary.valid + summary.invalid + summary.errors + summary.skipped
    return summary


def count_kinds(manifests: str) -> dict[str, int]:
    import yaml

    kinds: dict[str, int] = {}
    for doc in yaml.safe_load_all(manifests):
        if doc:
            kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
    return dict(sorted(kinds.items()))


def validate(overlay: str) -> Summary:
    manifests = render(overlay)
    summary = kubeconform(manifests, core_schema_dir(), overlay)
    summary.kinds = count_kinds(manifests)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="one JSON line per overlay")
    parser.add_argument("overlays", nargs="*", default=list(OVERLAYS))
    args = parser.parse_args(argv)
    failed = False
    for overlay in args.overlays:
        summary = validate(overlay)
        failed |= not summary.ok
        if args.json:
            print(json.dumps(summary.__dict__, sort_keys=True))
            continue
        print(f"[k8s-validate] {overlay}: {summary.resources} resources, valid {summary.valid}, "
              f"invalid {summary.invalid}, errors {summary.errors}, skipped {summary.skipped}")
        print("  " + ", ".join(f"{kind} {n}" for kind, n in summary.kinds.items()))
        for problem in summary.problems:
            print(f"  {problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
