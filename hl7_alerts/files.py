"""Files that hold patient data are owner-only, whatever the umask.

The store (and its WAL and shared-memory files), exports, reports and
backups made by our commands are PHI: every local user must not be able to
read them. A service's umask is the service manager's business and a
person's shell may have any, so the code that creates such files says so
itself: `private_umask` around creation, `write_private` for whole files,
`make_private_dir` for folders, `make_private_file` for a file another
library fills (SQLite: its ``-wal`` and ``-shm`` files take the database
file's mode, so a database file created 0600 keeps its side files 0600).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import structlog

log = structlog.get_logger("hl7_alerts.files")

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


def make_private_file(path: Path) -> None:
    """Make ``path`` owner-only before another library opens it: created
    empty (0600, its new folders 0700) when missing; an existing one that
    group or others may use is narrowed to its owner's bits (an older
    store, one a restore left 0644). A file we do not own cannot be
    narrowed: that is logged, and the site's to fix."""
    make_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        narrow_to_owner(path)
        return
    try:
        os.fchmod(fd, PRIVATE_FILE)  # whatever the umask
    finally:
        os.close(fd)


def narrow_to_owner(path: Path) -> None:
    """Take group and other permissions off an existing file (missing: nothing to do)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if not mode & 0o077:
        return
    try:
        os.chmod(path, mode & 0o700)
    except PermissionError as exc:
        log.warning("file_mode_kept", path=str(path), mode=oct(mode), error=exc.strerror)
    else:
        log.info("file_mode_narrowed", path=str(path), was=oct(mode), now=oct(mode & 0o700))
