"""A content-checked, atomically written disk cache for compiled kernels.

Each entry is `<sha256 of key>.bin` holding a header with the sha256 of its payload. A truncated
or corrupted entry fails the check, is deleted and rebuilt (with a warning). Writes go to a
temporary file renamed into place, so concurrent processes never see half an entry. A cache
directory that cannot be written disables the disk cache with one warning.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings

from lazygrad import config

_MAGIC = b"LGC1"
_disabled_reason: str | None = None


def _directory() -> str | None:
    global _disabled_reason
    if _disabled_reason is not None or config.CACHE_DIR.lower() in ("off", "0", "none"):
        return None
    try:
        os.makedirs(config.CACHE_DIR, exist_ok=True)
    except OSError as e:
        _disable(f"cannot create {config.CACHE_DIR}: {e}")
        return None
    return config.CACHE_DIR


def _disable(reason: str):
    global _disabled_reason
    if _disabled_reason is None:
        _disabled_reason = reason
        warnings.warn(
            f"lazygrad: disk cache disabled ({reason}); kernels will be compiled in every process",
            RuntimeWarning,
            stacklevel=3,
        )


def _path(directory: str, key: str) -> str:
    return os.path.join(directory, hashlib.sha256(key.encode()).hexdigest() + ".bin")


def get(key: str) -> bytes | None:
    directory = _directory()
    if directory is None:
        return None
    path = _path(directory, key)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return None
    if len(blob) >= 36 and blob[:4] == _MAGIC and hashlib.sha256(blob[36:]).digest() == blob[4:36]:
        return blob[36:]
    warnings.warn(
        f"lazygrad: discarded a corrupted kernel cache entry {path}; rebuilding it", RuntimeWarning, stacklevel=2
    )
    try:
        os.unlink(path)
    except OSError:
        pass
    return None


def put(key: str, payload: bytes) -> None:
    directory = _directory()
    if directory is None:
        return
    blob = _MAGIC + hashlib.sha256(payload).digest() + payload
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, _path(directory, key))
    except OSError as e:
        _disable(f"cannot write to {directory}: {e}")
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
