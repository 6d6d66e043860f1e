#!/usr/bin/env python3
"""Resolve the pinned JVM artifacts and swap in only the module folders that changed.

``mvn package`` copies each module's runtime classpath into a fresh staging folder; a module
folder under ``.stack/lib`` is replaced only when its files differ (names and sizes, and the
contents of the jars compiled here, ``imgstream-*``), so running JVMs whose jars did not change
never lose a file under their feet.

``sync_jars.py flink`` resolves only the named modules (the unit tests need only the job's jars).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


#: Jars compiled from this repository's sources: their name stays when their code changes.
OWN_JARS = "imgstream-"


def fingerprint(folder: Path) -> list[tuple[str, int, str]] | None:
    """What decides whether a module folder changed: each file's path, size and, for the jars
    compiled here, a hash of its contents (None: no folder)."""
    if not folder.exists():
        return None
    return sorted(
        (str(f.relative_to(folder)), f.stat().st_size,
         hashlib.sha256(f.read_bytes()).hexdigest() if f.name.startswith(OWN_JARS) else "")
        for f in folder.rglob("*") if f.is_file()
    )


def main(modules: list[str]) -> int:
    lib = ROOT / ".stack" / "lib"
    staging = ROOT / ".stack" / "lib.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = ["mvn", "-B", "-q", "-f", str(ROOT / "local-stack" / "jvm" / "pom.xml"), f"-Dstack.lib={staging}", "package"]
    if modules:
        cmd[1:1] = ["-pl", ",".join(modules)]
    if subprocess.call(cmd) != 0:
        print("ERROR: Maven could not resolve the pinned JVM artifacts (see above)", file=sys.stderr)
        return 1
    lib.mkdir(parents=True, exist_ok=True)
    for module in sorted(p for p in staging.iterdir() if p.is_dir()):
        target = lib / module.name
        new, old = fingerprint(module), fingerprint(target)
        assert new is not None
        if new == old:
            continue
        print(f"[deps] {module.name}: {'updated' if old is not None else 'resolved'} ({len(new)} files)")
        shutil.rmtree(target, ignore_errors=True)
        module.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
