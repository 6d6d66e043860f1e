"""local-stack/sync_jars.py: which module folders count as changed."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "local-stack"))

import sync_jars  # noqa: E402


def test_a_jar_compiled_here_counts_as_changed_when_its_contents_change(tmp_path):
    """Maven copies resolved jars under names that carry their version, but a jar compiled from
    this repository keeps its name when its code changes: only its contents tell."""
    old, new = tmp_path / "old", tmp_path / "new"
    for folder in (old, new):
        folder.mkdir()
        (folder / "lib-1.0.jar").write_bytes(b"resolved")
    (old / "imgstream-flink-ops.jar").write_bytes(b"class A")
    (new / "imgstream-flink-ops.jar").write_bytes(b"class B")
    assert sync_jars.fingerprint(old) != sync_jars.fingerprint(new)
    (new / "imgstream-flink-ops.jar").write_bytes(b"class A")
    assert sync_jars.fingerprint(old) == sync_jars.fingerprint(new)
    (new / "lib-1.0.jar").write_bytes(b"resolved, longer")  # a resolved jar: by name and size
    assert sync_jars.fingerprint(old) != sync_jars.fingerprint(new)
    assert sync_jars.fingerprint(tmp_path / "missing") is None
