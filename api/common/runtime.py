"""An imgstream HTTP service at run time: how its entry point starts it, serves it and stops it.

Used by the entry points of the deployables (``python -m api.gateway``, ``python -m api.stats``),
after their ``Config.from_env`` (:class:`imgstream.config.ConfigReader`) read the settings once:
dependencies started with retries until a deadline (:func:`retry_until`), the app served until
SIGTERM/SIGINT and then drained (:func:`serve_until_signal`), and the process exit code
(:func:`run_service`).

Process plumbing only: what a service does lives in its deployable, the HTTP conventions every
service shares (logs, errors, metrics, health) in :mod:`api.common.httpkit`, and how a test or a
benchmark starts a service as a child process in :mod:`api.common.process`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any, Awaitable, Callable, Coroutine, Final, Mapping, TypeVar

from aiohttp import web

from imgstream.domain.errors import Unavailable

T = TypeVar("T")

#: First pause between start-up attempts: a dependency that is just starting (the local stack
#: after ``make up``) usually answers within a second.
RETRY_FIRST_DELAY: Final = 0.5
#: Longest pause between attempts (the pause doubles from the first): a dependency that came back
#: is noticed within seconds, without hammering one that is still down.
RETRY_MAX_DELAY: Final = 5.0
#: Connections the kernel queues before the service accepts them: room for a burst of clients
#: reconnecting at once (after a deploy or a restart) instead of refused connections.
LISTEN_BACKLOG: Final = 1024
#: Exit code of a service that could not start (a dependency unreachable, a port taken, a bad
#: value); 1 stays Python's own code for a crash.
EXIT_CANNOT_START: Final = 2


async def retry_until(attempt: Callable[[], Awaitable[T]], *, timeout: float,
                      retry_on: tuple[type[BaseException], ...], logger: logging.Logger, message: str) -> T:
    """``await attempt()`` until it succeeds, retrying on ``retry_on`` for up to ``timeout`` seconds.

    Between attempts the pause doubles from :data:`RETRY_FIRST_DELAY` to at most
    :data:`RETRY_MAX_DELAY`, and ``message`` is logged as a warning with the error. When the next
    attempt would start after the deadline, the last error is raised.
    """
    deadline = time.monotonic() + timeout
    delay = RETRY_FIRST_DELAY
    while True:
        try:
            return await attempt()
        except retry_on as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning(message, extra={"error": str(exc), "retry_in_s": delay})
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_DELAY)


async def serve_until_signal(app: web.Application, *, host: str, port: int, logger: logging.Logger,
                             server_options: Mapping[str, Any], listening: Mapping[str, Any] | None = None,
                             reuse_port: bool = False, drain: Callable[[], Awaitable[None]] | None = None,
                             prestop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT, then stop gracefully.

    On the signal: await ``prestop`` (a service that keeps serving while load balancers notice
    its failed readiness), stop listening (established connections go on), await ``drain`` (a service's
    own wait for in-flight work, if it has one), then ``AppRunner.cleanup()``, which runs the
    app's ``on_shutdown``, waits for running handlers up to the runner's ``shutdown_timeout`` and
    runs its cleanup contexts. The runner is cleaned up on errors too (a port already taken).
    Logs ``listening`` (with the URL and the ``listening`` fields) and ``signal received: draining``.

    ``server_options`` go to :class:`aiohttp.web.AppRunner`; ``reuse_port`` lets several
    processes (one per core) share the port on one host.
    """
    runner = web.AppRunner(app, handle_signals=False, **server_options)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=LISTEN_BACKLOG, reuse_port=reuse_port or None)
        await site.start()
        logger.info("listening", extra={"url": f"http://{host}:{port}", **(listening or {})})
        await _termination_signal()
        logger.info("signal received: draining")
        if prestop is not None:
            await prestop()
        await site.stop()
        if drain is not None:
            await drain()
    finally:
        await runner.cleanup()


async def _termination_signal() -> None:
    """Return on the first SIGTERM or SIGINT. The handlers stay installed: a second signal while
    draining must not kill the process halfway."""
    received = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, received.set)
    await received.wait()


def run_service(serve: Callable[[], Coroutine[Any, Any, None]], logger: logging.Logger, *, unreachable: str,
                loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> int:
    """Run ``serve()`` on a new event loop; the process exit code.

    0 after a clean stop; :data:`EXIT_CANNOT_START` when the service cannot start: a dependency
    still unreachable at its start-up deadline (:class:`~imgstream.domain.errors.Unavailable`, logged as
    ``unreachable``) or a bad address or value (logged as ``cannot start``).
    """
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve())
    except Unavailable as exc:
        logger.error(unreachable, extra={"error": str(exc)})
        return EXIT_CANNOT_START
    except (OSError, ValueError) as exc:
        logger.error("cannot start", extra={"error": str(exc)})
        return EXIT_CANNOT_START
    return 0


def uvloop_factory(logger: logging.Logger | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop``'s event loop factory when it is installed (requirements.txt pins it): it roughly
    halves the event loop's share of each request. ``None`` (the asyncio loop) otherwise, with a
    warning on ``logger``."""
    try:
        import uvloop
    except ImportError:
        if logger is not None:
            logger.warning("uvloop not installed (pip install -r requirements.txt): using the asyncio event loop")
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
