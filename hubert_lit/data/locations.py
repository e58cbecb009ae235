"""Where a shard folder or labels folder lives, and how its files are opened.

A location is given as a string (``data.train_shards``, ``data.train_labels``, ``label --shards``):

* a local folder: ``data/librispeech/shards/train-960`` or ``file:///scratch/librispeech/shards/train-960``;
* an ``http://`` or ``https://`` URL of a folder served by a web server (``<url>/index.json``, ``<url>/shard-000000.tar``,
  ...), read with :func:`hubert_lit.data.fetch.open_http` (resumed with range requests when a connection drops);
* an fsspec URL such as ``s3://bucket/librispeech/shards/train-960`` or ``gs://...``; the object-store
  backends are optional extras (``pip install 'hubert-lit[s3]'`` / ``'hubert-lit[gcs]'``);
* webdataset's ``pipe:`` convention with a ``{name}`` template, for example
  ``pipe:aws s3 cp s3://bucket/librispeech/shards/train-960/{name} -``: ``{name}`` is replaced by each file name (``index.json``,
  ``shard-000000.tar``, ...) and the command's standard output is read.

Only the file names of a shard or labels folder can be opened (:func:`check_file_name`): names read from a remote
``index.json`` go into URLs and shell commands, so anything else is refused before it gets there.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO

from hubert_lit.data.fetch import (
    DEFAULT_RETRY,
    FetchError,
    ResumingReader,
    RetryPolicy,
    SourceNotFoundError,
    discard,
    open_http,
)

SHARD_NAME_PATTERN = re.compile(r"shard-[0-9]{6,}")
"""Names of the shards ``python -m hubert_lit shard`` writes (``shard-000000``); remote names must match it."""

_FILE_NAME = re.compile(r"index\.json|meta\.json|centroids\.npy|shard-[0-9]{6,}(\.tar|\.labels\.npz)")

# fsspec protocols whose backend is an extra of this package: protocol -> (extra, package)
OBJECT_STORE_EXTRAS = {
    "s3": ("s3", "s3fs"),
    "s3a": ("s3", "s3fs"),
    "gs": ("gcs", "gcsfs"),
    "gcs": ("gcs", "gcsfs"),
    "az": ("azure", "adlfs"),
    "abfs": ("azure", "adlfs"),
}


class LocationError(ValueError):
    """A location string that cannot be used (unknown protocol, missing backend, bad template)."""


def check_file_name(name: str) -> str:
    """``name`` if it is a file name of a shard or labels folder, else ValueError (nothing else may be opened)."""
    if not _FILE_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a file of a shard or labels folder (index.json, meta.json, centroids.npy, "
            "shard-NNNNNN.tar, shard-NNNNNN.labels.npz)"
        )
    return name


def redact(url: str) -> str:
    """``url`` without a password (``https://user:secret@host/x`` -> ``https://user@host/x``), for messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}@{netloc}"))


class Location(ABC):
    """A folder of shard or label files; :meth:`open` streams one of its files front to back."""

    is_local = False

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def __str__(self) -> str:
        return redact(self.spec)

    @abstractmethod
    def describe(self, name: str) -> str:
        """Path or URL of file ``name``, for messages."""

    @abstractmethod
    def open(self, name: str) -> BinaryIO:
        """A binary stream of file ``name``; FileNotFoundError (SourceNotFoundError remotely) if it does not
        exist, :class:`~hubert_lit.data.fetch.FetchError` if it cannot be read."""

    def local_file(self, name: str) -> Path | None:
        """Path of file ``name`` on the local disk if it is there (local folder, cache), else None."""
        return None

    def read_bytes(self, name: str) -> bytes:
        with self.open(name) as stream:
            return stream.read()


class LocalFolder(Location):
    """A folder on the local file system."""

    is_local = True

    def __init__(self, root: str | os.PathLike) -> None:
        super().__init__(str(root))
        self.root = Path(root)

    def describe(self, name: str) -> str:
        return str(self.root / name)

    def open(self, name: str) -> BinaryIO:
        return open(self.root / name, "rb")

    def local_file(self, name: str) -> Path | None:
        return self.root / name


class HttpFolder(Location):
    """A folder served over HTTP(S): ``<url>/<name>``."""

    def __init__(self, url: str, policy: RetryPolicy) -> None:
        super().__init__(url)
        self.base, self.policy = url.rstrip("/"), policy

    def describe(self, name: str) -> str:
        return redact(f"{self.base}/{name}")

    def open(self, name: str) -> BinaryIO:
        return open_http(f"{self.base}/{check_file_name(name)}", self.policy)


class FsspecFolder(Location):
    """A folder of an fsspec file system (``s3://``, ``gs://``, ``memory://``, ...)."""

    def __init__(self, url: str, policy: RetryPolicy) -> None:
        super().__init__(url)
        self.base, self.policy = url.rstrip("/"), policy
        self._fs = None
        self._pid: int | None = None
        self._filesystem()  # fail now, naming the extra, if the backend is missing

    def _filesystem(self):
        # One file system object per process: DataLoader workers are forked, and async backends (s3fs, gcsfs)
        # must not share their event loop across a fork.
        if self._fs is None or self._pid != os.getpid():
            import fsspec

            protocol = self.base.split("://", 1)[0]
            try:
                self._fs = fsspec.filesystem(protocol)
            except ImportError as err:
                if protocol in OBJECT_STORE_EXTRAS:
                    extra, package = OBJECT_STORE_EXTRAS[protocol]
                    raise LocationError(
                        f"{self}: {protocol}:// locations need the {package} package: "
                        f"pip install 'hubert-lit[{extra}]' (or pip install {package})"
                    ) from err
                raise LocationError(f"{self}: {err}") from err
            self._pid = os.getpid()
        return self._fs

    def describe(self, name: str) -> str:
        return redact(f"{self.base}/{name}")

    def open(self, name: str) -> BinaryIO:
        url = f"{self.base}/{check_file_name(name)}"

        def open_at(offset: int) -> tuple[BinaryIO, int | None]:
            fs = self._filesystem()
            try:
                stream = fs.open(url, "rb")
            except FileNotFoundError as err:
                raise SourceNotFoundError(f"{redact(url)}: not found") from err
            if offset:
                stream.seek(offset)
            return stream, getattr(stream, "size", None)

        return ResumingReader(redact(url), open_at, self.policy)


class _CommandOutput(io.RawIOBase):
    """Standard output of a shell command; an exit status other than 0 is an error at the end of the output.
    Closed early, the command (and anything it started) is killed rather than waited for."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self.command = command
        self._proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, start_new_session=True)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self._proc.stdout.readinto(buffer)
        if not count and len(buffer):
            status = self._proc.wait()
            if status != 0:
                raise OSError(f"command exited with status {status}: {self.command}")
        return count

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)  # its own session: the shell and its children
            except ProcessLookupError:
                pass
        self._proc.stdout.close()
        self._proc.wait()
        super().close()


class PipeTemplate(Location):
    """webdataset's ``pipe:`` convention: the output of ``command`` with ``{name}`` replaced by the file name."""

    def __init__(self, spec: str, policy: RetryPolicy) -> None:
        super().__init__(spec)
        self.template, self.policy = spec.removeprefix("pipe:"), policy
        if "{name}" not in self.template:
            raise LocationError(
                f"{spec}: a pipe: location needs a {{name}} placeholder for the file name, e.g. "
                "'pipe:curl -s https://host/shards/{name}'"
            )

    def command(self, name: str) -> str:
        return self.template.replace("{name}", check_file_name(name))

    def describe(self, name: str) -> str:
        return f"pipe:{self.template.replace('{name}', name)}"

    def open(self, name: str) -> BinaryIO:
        command = self.command(name)

        def open_at(offset: int) -> tuple[BinaryIO, int | None]:
            stream = _CommandOutput(command)
            if offset:  # a command can only start at the beginning
                try:
                    discard(stream, offset, f"pipe:{command}")
                except BaseException:
                    stream.close()
                    raise
            return stream, None

        return ResumingReader(f"pipe:{command}", open_at, self.policy)


def parse_location(spec: str | os.PathLike, policy: RetryPolicy = DEFAULT_RETRY) -> Location:
    """The :class:`Location` a ``data.*_shards`` / ``*_labels`` setting or ``label --shards`` names."""
    if isinstance(spec, Location):
        return spec
    if not isinstance(spec, str):
        return LocalFolder(spec)
    if spec.startswith("pipe:"):
        return PipeTemplate(spec, policy)
    scheme = urllib.parse.urlsplit(spec).scheme if "://" in spec else ""
    if scheme == "file":
        return LocalFolder(urllib.request.url2pathname(urllib.parse.urlsplit(spec).path))
    if scheme in ("http", "https"):
        return HttpFolder(spec, policy)
    if len(scheme) > 1:
        from fsspec.registry import known_implementations, registry

        if scheme not in known_implementations and scheme not in registry:
            raise LocationError(
                f"{redact(spec)}: unknown protocol {scheme}:// (use a local folder, http(s)://, an fsspec "
                "protocol such as s3:// or gs://, or pipe:<command with {name}>)"
            )
        return FsspecFolder(spec, policy)
    return LocalFolder(spec)


def is_local(spec: str | os.PathLike) -> bool:
    """True when ``spec`` names a local folder (a path or ``file://`` URL), without checking that it exists."""
    if not isinstance(spec, str):
        return True
    return not spec.startswith("pipe:") and ("://" not in spec or spec.startswith("file://"))


__all__ = [
    "SHARD_NAME_PATTERN",
    "FetchError",
    "FsspecFolder",
    "HttpFolder",
    "LocalFolder",
    "Location",
    "LocationError",
    "PipeTemplate",
    "SourceNotFoundError",
    "check_file_name",
    "is_local",
    "parse_location",
    "redact",
]
