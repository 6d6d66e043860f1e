"""An exclusive lock between processes on one machine: ``fcntl.flock`` on a file.

Used where two runs of one command must not interleave (two ``make up`` at once started two
pipeline jobs, issue 16 item 7). The kernel releases the lock when its holder exits, also by
SIGKILL, so a crashed holder never leaves a stale lock; the holder's pid is written into the
file only to say who is waited for.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

#: How long a second caller waits for the first one (a ``make up`` of the whole stack takes a
#: few minutes on 2 cores; one stuck longer is a bug to report, not to wait for forever).
LOCK_TIMEOUT_S = 900
#: How often a waiting caller tries the lock again.
LOCK_POLL_S = 0.5


@contextlib.contextmanager
def exclusive(lock_file: Path, what: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the block, waiting up to ``timeout_s`` for
    another holder (saying so once); raises ``TimeoutError`` naming ``what`` after that."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"another {what} held {lock_file} for over {timeout_s:.0f}s") from None
                if not told:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    print(f"waiting for another {what} (pid {holder}) to finish ...", flush=True)
                    told = True
                time.sleep(LOCK_POLL_S)  # the lock is held by another process: try again shortly
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
