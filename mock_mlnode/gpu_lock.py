"""The node's one GPU as an advisory file lock, so it is shared across processes and containers.

Two versions of one node point at the same lock file (a shared volume in containers). `flock`
locks belong to an open file description, so two versions in one process exclude each other too.
The holder writes its name into the file, so a refused version can say who has the GPU.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["FileGpuLock", "lock_path_for"]


def lock_path_for(template: str, node: str) -> Path:
    """The lock file of `node`: `{node}` in the template is replaced, so a fleet gets one GPU per node."""
    return Path(template.replace("{node}", node))


class FileGpuLock:
    def __init__(self, path: Path, holder_name: str) -> None:
        self.path = path
        self.holder_name = holder_name
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.holder_name} pid={os.getpid()}".encode(), 0)
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def holder(self) -> str | None:
        """Who holds the GPU now, or None when it is free."""
        if self._fd is not None:
            return f"{self.holder_name} pid={os.getpid()}"
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        if not text:
            return None
        return text if self._someone_holds_it() else None

    def _someone_holds_it(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)
