#!/usr/bin/env python3
"""Resolve the pinned JVM artifacts and swap in only the module folders that changed.

``mvn package`` copies each module's runtime classpath into a fresh staging folder; a module
folder under ``.stack/lib`` is replaced only when its file list differs, so running JVMs whose
jars did not change never lose a file under their feet.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    lib = ROOT / ".stack" / "lib"
    staging = ROOT / ".stack" / "lib.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    cmd = ["mvn", "-B", "-q", "-f", str(ROOT / "local-stack" / "jvm" / "pom.xml"), f"-Dstack.lib={staging}", "package"]
    if subprocess.call(cmd) != 0:
        print("ERROR: Maven could not resolve the pinned JVM artifacts (see above)", file=sys.stderr)
        return 1
    lib.mkdir(parents=True, exist_ok=True)
    for module in sorted(p for p in staging.iterdir() if p.is_dir()):
        target = lib / module.name
        new = sorted(f.name for f in module.rglob("*") if f.is_file())
        old = sorted(f.name for f in target.rglob("*") if f.is_file()) if target.exists() else None
        if new == old:
            continue
        print(f"[deps] {module.name}: {'updated' if old is not None else 'resolved'} ({len(new)} files)")
        shutil.rmtree(target, ignore_errors=True)
        module.rename(target)
    shutil.rmtree(staging, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
