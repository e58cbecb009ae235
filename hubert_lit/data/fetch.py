"""Byte streams of remote files that survive dropped connections.

:class:`ResumingReader` reads a file front to back through an ``open_at(offset)`` function. When the stream
breaks (connection reset, timeout, a body shorter than its announced length, a command that exits with an error)
it waits, reopens the file at the byte where it stopped and carries on, a bounded number of times. HTTP reopens
with a ``Range`` request; a server that ignores ranges sends the whole file again and the bytes already read are
skipped, as are those of sources that can only start at the beginning (``pipe:`` commands). Memory stays bounded:
nothing is kept beyond the caller's read buffer.

webdataset's own http handler shells out to ``curl``, which cannot resume a body dropped mid-stream, so HTTP is
read here with the standard library (:func:`open_http`).
"""

from __future__ import annotations

import http.client
import io
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

DISCARD_CHUNK = 1 << 20


class FetchError(OSError):
    """A remote file could not be read (after the retries the policy allows); the message names the URL."""


class SourceNotFoundError(FetchError, FileNotFoundError):
    """The remote file does not exist (HTTP 404/410, no such object); never retried."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: ``retries`` reopenings per file in all (after the first attempt), waiting ``backoff``
    seconds before the first and doubling up to ``max_backoff``; ``timeout`` seconds without data counts as a
    dropped connection."""

    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 30.0
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.timeout <= 0:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, failure: int) -> float:
        """Seconds to wait before reopening after the ``failure``-th failure (1-based)."""
        return min(self.max_backoff, self.backoff * 2 ** (failure - 1))


DEFAULT_RETRY = RetryPolicy()

# open_at(offset) -> (stream positioned at offset, total size in bytes or None if unknown)
Opener = Callable[[int], tuple[BinaryIO, int | None]]


class ResumingReader(io.RawIOBase):
    """A read-only, forward-only stream over ``open_at`` that reopens at the current byte when reading fails.

    ``name`` (a URL or command) goes into every error message. :class:`SourceNotFoundError` and other
    :class:`FetchError` raised by ``open_at`` are final; any other ``OSError`` or ``http.client.HTTPException``
    from opening or reading, and a stream that ends before its announced size, count as one failure.
    """

    def __init__(self, name: str, open_at: Opener, policy: RetryPolicy = DEFAULT_RETRY) -> None:
        super().__init__()
        self.name, self._open_at, self.policy = name, open_at, policy
        self._stream: BinaryIO | None = None
        self._position = 0
        self.size: int | None = None
        self.failures = 0
        self._open()

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def _open(self) -> None:
        while True:
            try:
                self._stream, size = self._open_at(self._position)
            except FetchError:
                raise
            except (OSError, http.client.HTTPException) as err:
                self._failed(f"cannot open ({_describe(err)})")
                continue
            if self.size is not None and size is not None and size != self.size:
                self._close_stream()
                raise FetchError(
                    f"{self.name}: the file changed while it was read ({self.size} -> {size} bytes)"
                )
            self.size = size if size is not None else self.size
            return

    def _failed(self, why: str) -> None:
        self._close_stream()
        self.failures += 1
        if self.failures > self.policy.retries:
            raise FetchError(
                f"{self.name}: {why} at byte {self._position}"
                + (f" of {self.size}" if self.size is not None else "")
                + f"; gave up after {self.failures} attempts"
            )
        time.sleep(self.policy.delay(self.failures))

    def readinto(self, buffer) -> int:
        if len(buffer) == 0:
            return 0
        while True:
            if self._stream is None:
                self._open()
            try:
                count = self._stream.readinto(buffer)
            except FetchError:
                raise
            except (OSError, http.client.HTTPException) as err:
                self._failed(f"connection dropped ({_describe(err)})")
                continue
            if not count and self.size is not None and self._position < self.size:
                self._failed(f"body ended early ({self._position} of {self.size} bytes)")
                continue
            self._position += count or 0
            return count or 0

    def _close_stream(self) -> None:
        if self._stream is not None:
            try:
                self._stream.close()
            except (OSError, http.client.HTTPException):
                pass  # the stream is being abandoned because it failed
            self._stream = None

    def close(self) -> None:
        self._close_stream()
        super().close()


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text if type(err).__name__ in text else f"{type(err).__name__}: {text}"


def discard(stream: BinaryIO, count: int, name: str) -> None:
    """Read and drop ``count`` bytes of ``stream`` (to restart a source that cannot seek)."""
    left = count
    while left:
        chunk = stream.read(min(left, DISCARD_CHUNK))
        if not chunk:
            raise ConnectionError(f"{name}: the file ended after {count - left} bytes while skipping {count}")
        left -= len(chunk)


def _content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes 100-999/1000`` -> (100, 1000); ``bytes 100-999/*`` -> (100, None); None if unparsable."""
    if not value or not value.startswith("bytes "):
        return None
    span, _, total = value[6:].partition("/")
    start = span.partition("-")[0]
    if not start.isdigit():
        return None
    return int(start), int(total) if total.isdigit() else None


def open_http(url: str, policy: RetryPolicy = DEFAULT_RETRY) -> ResumingReader:
    """A :class:`ResumingReader` over an ``http(s)://`` URL (reopened with ``Range: bytes=<offset>-``)."""

    def open_at(offset: int) -> tuple[BinaryIO, int | None]:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        request = urllib.request.Request(url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=policy.timeout)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code in (404, 410):
                raise SourceNotFoundError(f"{url}: not found (HTTP {err.code})") from err
            if 400 <= err.code < 500 and err.code not in (408, 425, 429):
                raise FetchError(f"{url}: HTTP {err.code} {err.reason}") from err
            raise  # server trouble or rate limiting: retried
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if offset and response.status == 206:
            span = _content_range(response.headers.get("Content-Range"))
            if span is None or span[0] != offset:
                response.close()
                raise FetchError(f"{url}: asked for bytes from {offset}, got Content-Range {span}")
            total = span[1] if span[1] is not None else (None if length is None else offset + length)
            return response, total
        if offset:  # the server ignored the range: the whole file again; skip what was read
            discard(response, offset, url)
        return response, length

    return ResumingReader(url, open_at, policy)
