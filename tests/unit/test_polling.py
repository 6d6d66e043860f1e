"""The one poll-with-a-deadline helper (async and sync)."""

from __future__ import annotations

import time

import pytest

from imgstream.polling import PollTimeout, until, until_sync


async def test_until_returns_the_first_truthy_value():
    calls = []

    async def check():
        calls.append(1)
        return len(calls) if len(calls) >= 3 else None

    assert await until(check, "three calls", timeout=5, interval=0.01) == 3


async def test_until_fails_at_the_deadline_naming_what_and_the_last_value():
    seen = ["nothing"]

    async def never():
        return 0

    t0 = time.monotonic()
    with pytest.raises(PollTimeout, match=r"the thing \(seen nothing\): not reached within 0.2s \(last: 0\)"):
        await until(never, lambda: f"the thing (seen {seen[0]})", timeout=0.2, interval=0.05)
    assert 0.2 <= time.monotonic() - t0 < 2


def test_until_sync_checks_at_least_once_and_raises_an_assertion_error():
    assert until_sync(lambda: "ok", "at once", timeout=0) == "ok"
    with pytest.raises(AssertionError, match="never"):
        until_sync(lambda: None, "never", timeout=0.05, interval=0.01)
