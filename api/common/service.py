"""An imgstream HTTP service as a process: how it starts and stops, and how a harness starts one.

Service side, used by the entry points of the deployables (``python -m api.gateway``,
``python -m api.stats``): its settings from prefixed environment variables (:class:`EnvReader`,
read once, by ``Config.from_env``), dependencies started with retries until a deadline
(:func:`retry_until`), the app served until SIGTERM/SIGINT and then drained
(:func:`serve_until_signal`), and the process exit code (:func:`run_service`).

Harness side, used by tests and benchmarks: :func:`start_service` runs ``python -m <module>`` on a
free port and waits, with a deadline, until it answers its health endpoint; :class:`ServiceProcess`
stops it by its pid.

Process plumbing only: what a service does lives in its deployable, the HTTP conventions every
service shares (logs, errors, metrics, health) in :mod:`api.common.httpkit`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Final, Mapping, TypeVar

import aiohttp
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
#: How often a harness asks a starting service whether it is up.
READY_POLL_INTERVAL: Final = 0.2

_TRUE: Final = frozenset({"1", "true", "yes", "on"})


# -- service side -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnvReader:
    """The variables of one service: ``prefix + name`` in ``env``; an unset variable takes the default.

    A value that does not parse raises :class:`ValueError` naming the variable.
    """

    env: Mapping[str, str]
    prefix: str

    def text(self, name: str, default: str) -> str:
        """The variable as it is."""
        return self.env.get(self.prefix + name, default)

    def optional(self, name: str) -> str | None:
        """The variable, or ``None`` when it is unset or empty."""
        return self.env.get(self.prefix + name) or None

    def integer(self, name: str, default: int) -> int:
        """The variable as an ``int``."""
        return self._parse(name, default, int)

    def number(self, name: str, default: float) -> float:
        """The variable as a ``float``."""
        return self._parse(name, default, float)

    def flag(self, name: str, default: bool) -> bool:
        """The variable as a ``bool``: ``1``, ``true``, ``yes`` or ``on`` (any case) are true, anything else false."""
        value = self.env.get(self.prefix + name)
        return default if value is None else value.strip().lower() in _TRUE

    def _parse(self, name: str, default: T, parse: Callable[[str], T]) -> T:
        value = self.env.get(self.prefix + name)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError:
            raise ValueError(f"{self.prefix}{name}: {value!r} is not a valid {parse.__name__}") from None


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
                             reuse_port: bool = False, drain: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT, then stop gracefully.

    On the signal: stop listening (established connections go on), await ``drain`` (a service's
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


# -- harness side -----------------------------------------------------------------------------------


class ServiceNotReady(RuntimeError):
    """A service started by :func:`start_service` exited, or did not answer in time."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServiceProcess:
    """A service running as a child process, started by :func:`start_service`."""

    proc: subprocess.Popen[bytes]
    url: str
    #: Its stdout and stderr (the JSON log lines).
    log: Path

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def log_tail(self, chars: int = 4000) -> str:
        """The end of its log, for error messages."""
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (a graceful stop), then SIGKILL if it has not exited after ``timeout`` seconds;
        its exit code. Nothing is sent to a process that already exited."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


async def start_service(module: str, *, cwd: Path, env: Mapping[str, str], port_variable: str, log: Path,
                        ready_path: str = "/healthz", timeout: float = 60.0,
                        host: str = "127.0.0.1") -> ServiceProcess:
    """Run ``python -m <module>`` in ``cwd`` on a free port and wait until it is up.

    The child gets this process's environment, then ``env``, then the port in ``port_variable``
    and ``cwd`` as ``PYTHONPATH`` (so it imports the deployable from there); its output goes to
    ``log``. It is up once ``GET <ready_path>`` answers 200. If it exits first, or is not up
    within ``timeout`` seconds, it is stopped and :class:`ServiceNotReady` raised with the end of
    its log.
    """
    port = free_port(host)
    child_env = {**os.environ, **env, port_variable: str(port), "PYTHONPATH": str(cwd)}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", module], cwd=cwd, env=child_env, stdout=out,
                                stderr=subprocess.STDOUT)
    service = ServiceProcess(proc, f"http://{host}:{port}", log)
    try:
        await _wait_ready(service, module, ready_path, timeout)
    except BaseException:
        service.stop(timeout=5.0)
        raise
    return service


async def _wait_ready(service: ServiceProcess, module: str, ready_path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            if service.proc.poll() is not None:
                raise ServiceNotReady(f"{module} exited with {service.proc.returncode} before it was up:\n"
                                      f"{service.log_tail()}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceNotReady(f"{module}: {ready_path} not 200 within {timeout:g} s:\n{service.log_tail()}")
            try:
                async with session.get(service.url + ready_path,
                                       timeout=aiohttp.ClientTimeout(total=min(left, 5.0))) as response:
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass  # not listening yet, or not answering yet
            await asyncio.sleep(READY_POLL_INTERVAL)
