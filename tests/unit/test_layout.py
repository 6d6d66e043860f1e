"""The architecture's rules, checked by parsing the code (each test fails when a rule breaks).

- ``imgstream/domain`` is pure: it imports the standard library, itself, numpy and Pillow only,
  so it loads alike on a Flink worker, a Spark executor, a gateway and a unit test.
- ``imgstream/adapters`` is the only door to a service: no other code constructs a Kafka,
  Cassandra, S3 or PostgreSQL client.
- No module is a god module: 500 lines at most in the deployables and the library.
- The library never imports a deployable.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOMAIN = REPO / "imgstream" / "domain"
ROOMS = ("imgstream", "api", "flink_jobs", "local-stack", "batch")
MAX_MODULE_LINES = 500
#: Third-party packages the pure domain may import (the imaging code needs them).
DOMAIN_ALLOWED = {"numpy", "PIL"}
#: Calls that build a service client; only ``imgstream/adapters`` may make them.
CLIENT_CONSTRUCTORS = {"AIOKafkaAdminClient", "AIOKafkaProducer", "AIOKafkaConsumer", "Cluster", "create_client",
                       "create_pool"}
#: Client libraries whose clients only the adapters may construct.
CLIENT_LIBRARIES = {"aiokafka", "cassandra", "asyncpg", "aiobotocore"}
#: Deployables the library must not import.
DEPLOYABLES = {"api", "flink_jobs", "batch", "bench", "tests"}


def python_files(*roots: Path) -> list[Path]:
    return sorted(p for root in roots if root.exists() for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def imported_modules(path: Path) -> set[str]:
    """Top-level-qualified names of every module ``path`` imports (at any depth of the file)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def constructed_clients(path: Path) -> set[str]:
    """Service clients ``path`` builds itself: a constructor imported from a client library and
    called (``Cluster(...)``), called on a client library module (``asyncpg.create_pool(...)``),
    or an aiobotocore session's ``create_client``. Calls into ``imgstream.adapters`` are fine."""
    tree = ast.parse(path.read_text(), filename=str(path))
    direct: set[str] = set()
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in CLIENT_LIBRARIES:
            direct.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            modules.update(alias.asname or alias.name for alias in node.names
                           if alias.name.split(".")[0] in CLIENT_LIBRARIES)
    uses_botocore_sessions = "get_session" in direct
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in direct and func.id in CLIENT_CONSTRUCTORS:
            found.add(func.id)
        elif isinstance(func, ast.Attribute) and func.attr in CLIENT_CONSTRUCTORS:
            base = func.value
            if isinstance(base, ast.Name) and base.id in modules:
                found.add(func.attr)
            elif func.attr == "create_client" and uses_botocore_sessions:
                found.add(func.attr)
    return found


def test_the_domain_imports_only_the_standard_library_itself_numpy_and_pillow() -> None:
    offenders = {}
    for path in python_files(DOMAIN):
        bad = {name for name in imported_modules(path)
               if name.split(".")[0] not in sys.stdlib_module_names
               and name.split(".")[0] not in DOMAIN_ALLOWED
               and not (name == "imgstream.domain" or name.startswith("imgstream.domain."))}
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert not offenders, f"the domain must stay pure: {offenders}"


def test_the_domain_rule_catches_a_framework_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("import json\nfrom aiohttp import web\nfrom imgstream.adapters.s3 import ObjectStore\n")
    found = {n for n in imported_modules(module) if n.split(".")[0] not in sys.stdlib_module_names}
    assert found == {"aiohttp", "imgstream.adapters.s3"}


def test_the_client_rule_sees_direct_module_and_session_constructions(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("import asyncpg\nfrom cassandra.cluster import Cluster\nfrom aiobotocore.session import get_session\n"
                      "from imgstream.adapters.postgres import create_pool\n"
                      "Cluster(['h'])\nasyncpg.create_pool('dsn')\nget_session().create_client('s3')\ncreate_pool(cfg)\n")
    assert constructed_clients(module) == {"Cluster", "create_pool", "create_client"}
    module.write_text("from imgstream.adapters.postgres import create_pool\ncreate_pool(cfg)\n")
    assert constructed_clients(module) == set()


def test_only_the_adapters_construct_service_clients() -> None:
    adapters = REPO / "imgstream" / "adapters"
    offenders = {}
    for path in python_files(*(REPO / room for room in ROOMS), REPO / "bench"):
        if adapters in path.parents:
            continue
        calls = constructed_clients(path)
        if calls:
            offenders[str(path.relative_to(REPO))] = sorted(calls)
    assert not offenders, f"build clients through imgstream.adapters: {offenders}"


@pytest.mark.parametrize("room", ROOMS)
def test_no_module_is_over_the_line_limit(room: str) -> None:
    long = {str(p.relative_to(REPO)): n for p in python_files(REPO / room)
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules (one concept each, <= {MAX_MODULE_LINES} lines): {long}"


def test_the_library_never_imports_a_deployable() -> None:
    offenders = {}
    for path in python_files(REPO / "imgstream"):
        bad = {n for n in imported_modules(path) if n.split(".")[0] in DEPLOYABLES}
        if bad:
            offenders[str(path.relative_to(REPO))] = sorted(bad)
    assert not offenders, f"the library must not import deployables: {offenders}"
