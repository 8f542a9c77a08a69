"""Files the edge writes: one atomic write for keys, certificates and saved configuration.

A reader never sees half a file: the data goes to a temporary file in the same folder (created
``0600``-or-``mode`` from the start, so a key is never readable by others even briefly), is
flushed and fsynced, renamed over the target (``os.replace``), and the folder is fsynced so the
rename survives a power cut. On any error the temporary file is removed and the target is left
as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike[str], data: bytes | str, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (``str`` is written as UTF-8).

    ``mode``: the file's permissions; None keeps those of the file it replaces (``0600`` for a
    new file). The folder is created when missing.
    """
    target = Path(path)
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    if mode is None:
        try:
            mode = os.stat(target).st_mode & 0o777
        except OSError:
            mode = 0o600
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
