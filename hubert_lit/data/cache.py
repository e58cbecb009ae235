"""A local disk cache of remote shard and label files (``data.cache_dir``, ``label --cache-dir``).

Each remote folder gets its own subfolder, named by a hash of its URL and of its ``index.json`` (or labels
``meta.json``): when the files behind a URL are rewritten, their index changes and a fresh subfolder is used, so a
stale copy is never read. A file is downloaded whole (with the resuming reader), written atomically, and read
from the disk from then on; processes that want the same file at the same time (the loader workers and ranks of a
node) wait on a file lock while one of them downloads it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from hubert_lit.atomic import atomic_write
from hubert_lit.data.locations import Location, check_file_name

COPY_CHUNK = 1 << 20


def cache_key(location: Location, fingerprint: bytes) -> str:
    """Subfolder name for ``location`` whose index (or meta) file has the bytes ``fingerprint``."""
    digest = hashlib.sha256(location.spec.encode("utf-8") + b"\0" + fingerprint).hexdigest()
    return digest[:24]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class CachedLocation(Location):
    """``inner`` (a remote location) read through a copy of each file in ``cache_dir / key``."""

    def __init__(self, inner: Location, cache_dir: str | os.PathLike, key: str) -> None:
        super().__init__(inner.spec)
        self.inner = inner
        self.root = Path(cache_dir) / key

    def describe(self, name: str) -> str:
        return self.inner.describe(name)

    def local_file(self, name: str) -> Path:
        """Download file ``name`` into the cache unless it is there already; its path."""
        target = self.root / check_file_name(name)
        if target.is_file():
            return target
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / f".{name}.lock"):
            if not target.is_file():  # another process may have fetched it while this one waited
                with self.inner.open(name) as stream:
                    atomic_write(target, lambda f: shutil.copyfileobj(stream, f, COPY_CHUNK))
        return target

    def open(self, name: str) -> BinaryIO:
        return open(self.local_file(name), "rb")
