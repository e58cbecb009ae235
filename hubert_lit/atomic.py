"""Atomic file writes: a killed job leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` or an exception it was raised from is ENOSPC (torch.save reports it as a RuntimeError about
    an "unexpected pos", with the OSError only in the chain)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def temp_files(path: str | os.PathLike) -> list[Path]:
    """Temporary files :func:`atomic_write` leaves beside ``path`` when it is killed mid-write."""
    path = Path(path)
    return sorted(path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}")) if path.parent.is_dir() else []


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, fsync it, then rename it over ``path``.

    The temporary file lives in the same folder so the rename never crosses file systems (``/tmp`` is often
    another one); the folder is fsync'd too where the file system allows, so the rename itself is durable. The file
    gets the permissions of a plain ``open()`` under the process's umask (mkstemp's 0600 would hide it from a
    group sharing the folder). A full disk raises ``OSError(ENOSPC)`` naming the file; the previous file is kept.
    """
    path = Path(str(path).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, Exception) and _disk_full(err):
            kept = f" (previous file {path} kept)" if path.exists() else ""
            raise OSError(errno.ENOSPC, f"no space left on device writing {path}{kept}") from err
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def backup_path(out: str | os.PathLike) -> Path:
    """Where :func:`swap_folder` keeps the old ``out`` while the new one moves in."""
    out = Path(out)
    return out.with_name(f"{out.name}.bak")


def swap_folder(new: str | os.PathLike, out: str | os.PathLike) -> None:
    """Replace the folder ``out`` by the finished folder ``new``: old -> ``<out>.bak``, new -> ``out``, then the
    backup is deleted. Nothing is deleted before the new output is in place; :func:`recover_folder_swap` finishes
    or undoes a swap that was killed halfway."""
    import shutil

    new, out = Path(new), Path(out)
    bak = backup_path(out)
    if bak.exists():
        raise FileExistsError(
            f"{bak} exists: an earlier --overwrite was interrupted; run again to recover it"
        )
    if out.exists():
        out.rename(bak)
    new.rename(out)
    if bak.exists():
        shutil.rmtree(bak)


def recover_folder_swap(out: str | os.PathLike) -> str | None:
    """Finish or undo an interrupted :func:`swap_folder` of ``out``; returns what was done (None: nothing)."""
    import shutil

    out = Path(out)
    bak = backup_path(out)
    if not bak.exists():
        return None
    if out.exists():
        shutil.rmtree(bak)
        return f"removed {bak}, left by an interrupted --overwrite after the new {out} was in place"
    bak.rename(out)
    return f"restored {out} from {bak}: an --overwrite was interrupted before the new output was in place"
