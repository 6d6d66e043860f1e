"""The services' log handler: JSON lines written in batches, at once from WARNING up, all at close."""

from __future__ import annotations

import io
import json
import logging
import time

from api.common.httpkit import BufferedLineHandler, JsonFormatter


def _logger(stream: io.StringIO, interval: float) -> tuple[logging.Logger, BufferedLineHandler]:
    handler = BufferedLineHandler(stream, interval=interval)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.buffered.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler


def test_info_lines_are_gathered_not_written_one_by_one() -> None:
    stream = io.StringIO()
    logger, handler = _logger(stream, interval=60)
    for i in range(3):
        logger.info("request", extra={"n": i})
    assert stream.getvalue() == ""
    handler.flush()
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [0, 1, 2]
    handler.close()


def test_the_flusher_writes_them_within_the_interval_in_order() -> None:
    stream = io.StringIO()
    logger, handler = _logger(stream, interval=0.05)
    for i in range(3):
        logger.info("request", extra={"n": i})
    deadline = time.monotonic() + 5
    while stream.getvalue().count("\n") < 3:
        assert time.monotonic() < deadline, "buffered lines never written"
        time.sleep(0.01)
    assert [json.loads(line)["n"] for line in stream.getvalue().splitlines()] == [0, 1, 2]
    handler.close()


def test_a_warning_flushes_everything_before_it_at_once() -> None:
    stream = io.StringIO()
    logger, handler = _logger(stream, interval=60)
    logger.info("first")
    logger.warning("trouble")
    assert [json.loads(line)["msg"] for line in stream.getvalue().splitlines()] == ["first", "trouble"]
    handler.close()


def test_close_writes_what_is_left() -> None:
    stream = io.StringIO()
    logger, handler = _logger(stream, interval=60)
    logger.info("last words")
    handler.close()
    assert json.loads(stream.getvalue())["msg"] == "last words"
