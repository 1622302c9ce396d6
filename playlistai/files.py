"""Atomic writes, and the process checks that clean up after them.

Every write goes to a temporary path beside the target and is renamed into place, so a crash (an
exception, SIGKILL, out of memory) never leaves a half-written artifact where a reader expects a
whole one. A writer of several files writes them into one temporary directory that replaces the
old directory whole (`atomic_dir`), so a failure between two files never leaves old and new files
side by side.

Temporary names say who made them (`.<name>.tmp.<host>.<pid>.<random>`): a writer that was killed
cannot clean up after itself, so the next write of the same target removes the stale temporaries of
dead processes on this host (`pid_alive` tells which are dead). Written files and directories get
the usual permissions (0666 / 0777 less the umask), not the private ones of `tempfile`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

TMP_TAG = "tmp"


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race other threads' file creation)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _host() -> str:
    return socket.gethostname().replace("/", "_") or "localhost"


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.{TMP_TAG}.{_host()}.{os.getpid()}."


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def stale_temporaries(target: Path) -> list[Path]:
    """Temporary files and directories of `target` left by writers on this host that are gone."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    stale = []
    lead = f".{target.name}.{TMP_TAG}."
    for entry in target.parent.iterdir():
        if not entry.name.startswith(lead):
            continue
        try:
            host, pid, _random = entry.name[len(lead):].rsplit(".", 2)
            pid_value = int(pid)
        except ValueError:
            continue
        if host == _host() and pid_value != os.getpid() and not pid_alive(pid_value):
            stale.append(entry)
    return stale


def remove_stale_temporaries(target: Path) -> int:
    """Remove what `stale_temporaries` finds; returns how many entries went."""
    removed = 0
    for entry in stale_temporaries(target):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
    return removed


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path; on success move it onto `target`, on failure remove it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(df: pd.DataFrame, target: Path) -> None:
    with atomic_path(target) as tmp:
        df.to_parquet(tmp, index=False)


def write_json(obj, target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
