"""Atomic writes: a temporary file beside the target, fsync, ``os.replace``; stale
temporary files of killed writers are removed by the next write."""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat


try:
    import fcntl
except ImportError:  # pragma: no cover - no advisory locks (Windows): no stale-file cleanup
    fcntl = None


class WriteFailed(OSError):
    """A file could not be written (a full disk, a file-size limit, a missing folder):
    one line naming the file, the reason and, when known, how many bytes it needed
    (``nbytes``).  The ``errno`` is the original error's."""

    def __init__(self, path, exc, nbytes=None):
        super().__init__(exc.errno, exc.strerror or str(exc), os.fspath(path))
        self.nbytes = nbytes

    def __str__(self):
        need = f" (it needs {_size(self.nbytes)})" if self.nbytes is not None else ""
        return f"could not write {self.filename}: {self.strerror}{need}"


def _size(n):
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


# ------------------------------------------------------------------ atomic writes
_TMP_TAG = "nnc"


def _temp_pattern(base):
    # ours: <base>.nnc<8>.tmp; nn_core before this version: <base>.<8 mkstemp chars>.tmp
    return re.compile(re.escape(base) + r"\.(?:" + _TMP_TAG + r")?[a-z0-9_]{8}\.tmp")


def _remove_stale_temps(directory, base):
    """Delete temporary files of ``base`` whose writer is gone (no lock held on them)."""
    if fcntl is None:  # pragma: no cover - no advisory locks
        return
    pattern = _temp_pattern(base)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not pattern.fullmatch(name):
            continue
        full = os.path.join(directory, name)
        try:
            fd = os.open(full, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue                      # a live writer holds it
            cur = os.stat(full, follow_symlinks=False)
            if (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev):
                os.unlink(full)
        except OSError:
            pass
        finally:
            os.close(fd)


def _create_temp(directory, base, mode):
    """An exclusive, locked, newly created temporary file: ``(fd, path)``."""
    for _ in range(100):
        tmp = os.path.join(directory, f"{base}.{_TMP_TAG}{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if os.fstat(fd).st_nlink == 0:   # removed by a cleaner before we locked it
                    os.close(fd)
                    continue
            if mode is not None:
                os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return fd, tmp
    raise FileExistsError(f"could not create a temporary file for {base!r} in {directory!r}")


@contextlib.contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """Write ``path`` all at once or not at all: ``with atomic_write(p) as fh: ...``.

    The data go to a locked temporary file beside the target, which is flushed, fsync'ed
    and moved over the target with ``os.replace`` when the block ends without an
    exception (and deleted otherwise); the directory is fsync'ed after the move.
    Temporary files of the same target left behind by killed writers are deleted first.
    A symbolic link is followed (its target is written).  A new file gets the user's
    umask; an existing target keeps its permission bits.

    Parameters
    ----------
    path : str or os.PathLike
    mode : {"wb", "w"}
    encoding : str, optional
        For text mode (default UTF-8).

    Raises
    ------
    IsADirectoryError
        ``path`` is a directory.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    target = os.path.realpath(os.fspath(path))
    directory, base = os.path.split(target)
    keep_mode = None
    try:
        st = os.stat(target)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", os.fspath(path))
        if stat.S_ISREG(st.st_mode):
            keep_mode = stat.S_IMODE(st.st_mode)
    _remove_stale_temps(directory, base)
    fd, tmp = _create_temp(directory, base, keep_mode)
    try:
        kw = {"encoding": encoding or "utf-8", "newline": ""} if mode == "w" else {}
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, target)           # the lock is held until the file is closed
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
