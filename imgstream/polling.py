"""Polling with a deadline: wait for a condition instead of sleeping a fixed time.

One helper for every "check until it holds or give up" loop of the tools, stack scripts, tests
and benchmarks: :func:`until` for async code and :func:`until_sync`, its twin for synchronous
code (also the way to poll a *blocking* check from async code without blocking the event loop:
``await asyncio.to_thread(until_sync, check, ...)``).

A check returns something truthy when the condition holds (that value is returned) and
something falsy otherwise (kept as the *last* value for the failure message). Exceptions a
check raises are not swallowed: a check that may fail transiently catches that itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Final, TypeVar

T = TypeVar("T")

#: Default pause between two checks: short enough that a waiting test adds little to its run
#: time, long enough that a busy poll does not load the 2-core machine it waits on.
DEFAULT_INTERVAL_S: Final = 0.25

Description = str | Callable[[], str]


class PollTimeout(AssertionError):
    """A polled condition did not hold within its deadline (an ``AssertionError``, so a test
    that waits for a condition fails, not errors, when it never comes)."""


def _timeout(what: Description, timeout: float, last: object) -> PollTimeout:
    text = what() if callable(what) else what
    return PollTimeout(f"{text}: not reached within {timeout:g}s (last: {last!r})")


async def until(check: Callable[[], Awaitable[T | None]], what: Description, *, timeout: float,
                interval: float = DEFAULT_INTERVAL_S) -> T:
    """Await ``check()`` until it returns something truthy and return that value.

    ``check`` runs at least once, even with ``timeout`` <= 0. Raises :class:`PollTimeout` naming
    ``what`` (a string, or a callable evaluated at the deadline to describe what was seen) and the
    last value once ``timeout`` seconds have passed.
    """
    end = time.monotonic() + timeout
    while True:
        last = await check()
        if last:
            return last
        left = end - time.monotonic()
        if left <= 0:
            raise _timeout(what, timeout, last)
        await asyncio.sleep(min(interval, left))


def until_sync(check: Callable[[], T | None], what: Description, *, timeout: float,
               interval: float = DEFAULT_INTERVAL_S) -> T:
    """Synchronous twin of :func:`until`: call ``check()`` until it returns something truthy."""
    end = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        left = end - time.monotonic()
        if left <= 0:
            raise _timeout(what, timeout, last)
        time.sleep(min(interval, left))
