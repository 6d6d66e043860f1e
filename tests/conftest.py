"""Shared fixtures: where the local stack is.

Integration and e2e tests need the real services; they FAIL (never skip) when the stack is not
up, naming the command that brings it up. Unit tests need nothing.

A session that runs integration or e2e tests writes only synthetic producers
(``imgstream.domain.producers.SYNTHETIC_PREFIX``); :func:`synthetic_data` deletes their rows
when it ends (and leftovers of an interrupted session when it starts), see docs/local-stack.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from imgstream.config import StackConfig, load_env_file

REPO = Path(__file__).resolve().parent.parent

# Flink's operator test harness (flink-runtime's test jar; `make unit` resolves it into
# .stack/lib/flink-test) must be on the class path PyFlink's gateway starts with - loaded later,
# by another class loader, it cannot reach the package-private members of Flink's own classes.
# The gateway starts once per test process and adds FLINK_TEST_LIBS only with FLINK_TESTING set.
os.environ.setdefault("FLINK_TESTING", "1")
os.environ.setdefault("FLINK_TEST_LIBS", str(REPO / ".stack" / "lib" / "flink-test" / "*.jar"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(REPO).parts
        if len(parts) > 1 and parts[1] in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, parts[1]))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """The stack's endpoints: ``.stack/env`` overlaid with any IMGSTREAM_* variables already set."""
    env_file = REPO / ".stack" / "env"
    if not env_file.exists():
        pytest.fail("the local stack is not up (no .stack/env): run `make up`, or run the suite with `make test`")
    values = load_env_file(env_file)
    values.update({k: v for k, v in os.environ.items() if k.startswith("IMGSTREAM_")})
    return values


@pytest.fixture(scope="session")
def stack_config(stack_env: dict[str, str]) -> StackConfig:
    return StackConfig.from_env(stack_env)


@pytest.fixture(scope="session", autouse=True)
def synthetic_data(request: pytest.FixtureRequest) -> Iterator[None]:
    """Purge synthetic producers' rows around a session that uses the stack (unit-only: nothing)."""
    if not any(item.get_closest_marker("integration") or item.get_closest_marker("e2e")
               for item in request.session.items):
        yield
        return
    from flink_jobs.testing import synthetic_run

    with synthetic_run(request.getfixturevalue("stack_env"), "pytest"):
        yield
