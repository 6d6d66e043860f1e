"""An imgstream HTTP service as a child process, for tests and benchmarks.

:func:`start_service` runs ``python -m <module>`` on a free port and waits, with a deadline, until
it answers its health endpoint; :class:`ServiceProcess` stops it by its pid. How the service
itself runs and stops is :mod:`api.common.runtime`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Mapping

import aiohttp

#: How often a harness asks a starting service whether it is up.
READY_POLL_INTERVAL: Final = 0.2


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
