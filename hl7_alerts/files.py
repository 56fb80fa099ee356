"""Files that hold patient data are owner-only, whatever the umask.

The store (and its WAL and shared-memory files), exports, reports and
backups made by our commands are PHI: every local user must not be able to
read them. A service's umask is the service manager's business and a
person's shell may have any, so the code that creates such files says so
itself: `private_umask` around creation (SQLite makes its side files
itself), `write_private` for whole files, `make_private_dir` for folders.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files and folders created inside get no group or other permissions.

    The umask is process-wide: use it around creation only (opening a
    store, writing a report), not around long-running work on threads that
    create files of their own."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def make_private_dir(path: Path) -> None:
    """``mkdir -p`` whose new folders are owner-only; existing ones are left as they are."""
    with private_umask():
        path.mkdir(parents=True, exist_ok=True)


def write_private(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` owner-only (0600), atomically: a reader never
    sees half a file, and a file that was there is replaced."""
    make_private_dir(path.parent)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, PRIVATE_FILE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
