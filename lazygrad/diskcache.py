"""An authenticated, atomically written disk cache for compiled kernels.

The cache holds what lazygrad then runs (object code, OpenCL binaries, lowered programs), so an entry is
trusted only if it carries an HMAC-SHA256 under a per-user secret that lives outside the cache directory
(`$XDG_CONFIG_HOME/lazygrad/cache-key`, else `~/.config/lazygrad/cache-key`, created 0600 on first use).
The authenticated message is the entry's key (what it caches: the source and the target) and its payload, so
whoever can write the cache directory (a shared /tmp, a restored CI cache, another user) can neither forge an
entry nor move a genuine one under another key. docs/cache.md is the trust model.

Each entry is `<sha256 of key>.bin`: magic, tag, payload. An entry that fails its check (truncated, flipped
bits, forged, copied from another key or another user's cache) is deleted and rebuilt, with a warning; its
payload is never returned. Writes go to a temporary file renamed into place, so concurrent processes never see
half an entry. The cache is turned off for the process, with one warning, when its directory cannot be created or
written, is not owned by the user, or is writable by group or others, or when the key file cannot be made private.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import tempfile
import warnings

from lazygrad import config

_MAGIC = b"LGC2"
_OLD_MAGIC = b"LGC1"  # entries checked only by a sha256 inside themselves: anyone could write one
_TAG_BYTES = 32  # HMAC-SHA256
_HEADER_BYTES = len(_MAGIC) + _TAG_BYTES
_DOMAIN = b"lazygrad kernel cache entry v2\0"  # keeps these tags apart from any other use of the secret
_MAX_ENTRY_BYTES = 256 << 20  # far above any kernel's object code; a larger file is not read
KEY_FILE_NAME = "cache-key"
_SECRET_BYTES = 32

_disabled_reason: str | None = None
_warned_old_format = False
_verified_directories: set[str] = set()  # cache directories whose owner and mode were checked
_secrets: dict[str, bytes] = {}  # key file path -> secret


class _Refused(Exception):
    """A cache directory or key file that lazygrad will not trust; the message says why."""


def _disable(reason: str):
    global _disabled_reason
    if _disabled_reason is None:
        _disabled_reason = reason
        warnings.warn(
            f"lazygrad: disk cache disabled ({reason}); kernels will be compiled in every process",
            RuntimeWarning,
            stacklevel=3,
        )


def _check_private_directory(path: str, what: str) -> None:
    """Refuse a directory that someone other than this user could write into."""
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise _Refused(f"{what} {path} is not a directory")
    if not hasattr(os, "geteuid"):  # not POSIX (Windows): no owner and mode to check; the HMAC still holds
        return
    if st.st_uid != os.geteuid():
        raise _Refused(f"{what} {path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise _Refused(
            f"{what} {path} is writable by {'group and others' if st.st_mode & stat.S_IWOTH else 'its group'} "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); make it private with chmod 700"
        )


def _make_private_directory(path: str, what: str) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)  # the mode applies to the directory lazygrad creates
    except OSError as e:
        raise _Refused(f"cannot create {path}: {e}") from e
    _check_private_directory(path, what)


def _directory() -> str | None:
    if _disabled_reason is not None or config.CACHE_DIR.lower() in ("off", "0", "none"):
        return None
    directory = config.CACHE_DIR
    if directory in _verified_directories:
        return directory
    try:
        _make_private_directory(directory, "the kernel cache directory")
        _secret()  # no key, no cache: created now so that a problem with it is reported once, up front
    except (_Refused, OSError) as e:
        _disable(str(e))
        return None
    _verified_directories.add(directory)
    return directory


def key_file() -> str:
    """Where the secret that authenticates cache entries is kept."""
    return os.path.join(config.CONFIG_DIR, KEY_FILE_NAME)


def _read_key_file(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"the cache key {path} is not a regular file")
        if not hasattr(os, "geteuid"):
            pass  # not POSIX: the file is in the user's profile, which the OS keeps private
        elif st.st_uid != os.geteuid():
            raise _Refused(f"the cache key {path} is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})")
        elif st.st_mode & 0o077:
            raise _Refused(
                f"the cache key {path} can be read or written by others (mode {stat.S_IMODE(st.st_mode):04o}); "
                "delete it (a new one is made) or chmod 600 it"
            )
        text = os.read(fd, 4 * _SECRET_BYTES)
    finally:
        os.close(fd)
    try:
        secret = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        secret = b""
    if len(secret) != _SECRET_BYTES:
        raise _Refused(f"the cache key {path} is not {_SECRET_BYTES} bytes in hex; delete it and a new one is made")
    return secret


def _create_key_file(path: str) -> None:
    """Write a fresh secret under a temporary name (mkstemp makes it 0600) and link it into place: a concurrent
    process either finds the whole file or makes its own and then reads the winner's."""
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".cache-key-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(_SECRET_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process was first: use its key
    finally:
        os.unlink(temporary)


def _secret() -> bytes:
    path = key_file()
    secret = _secrets.get(path)
    if secret is None:
        _make_private_directory(os.path.dirname(path), "the directory of the cache key")
        try:
            secret = _read_key_file(path)
        except FileNotFoundError:
            _create_key_file(path)
            secret = _read_key_file(path)
        _secrets[path] = secret
    return secret


def _tag(key: str, payload: bytes) -> bytes:
    message = hmac.new(_secret(), _DOMAIN, hashlib.sha256)
    message.update(hashlib.sha256(key.encode()).digest())  # the key, fixed-length: no ambiguity with the payload
    message.update(payload)
    return message.digest()


def _path(directory: str, key: str) -> str:
    return os.path.join(directory, hashlib.sha256(key.encode()).hexdigest() + ".bin")


def _read_entry(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_ENTRY_BYTES:
            return b""  # a fifo, a device or a huge file: not an entry lazygrad wrote
        return f.read(_MAX_ENTRY_BYTES + 1)


def get(key: str) -> bytes | None:
    """The payload stored under `key`, or None; only an entry whose HMAC verifies is ever returned."""
    directory = _directory()
    if directory is None:
        return None
    path = _path(directory, key)
    try:
        blob = _read_entry(path)
    except OSError:  # a symlink (O_NOFOLLOW), a permission problem: treat as damaged
        blob = b""
    if blob is None:
        return None
    if len(blob) >= _HEADER_BYTES and blob[: len(_MAGIC)] == _MAGIC:
        payload = blob[_HEADER_BYTES:]
        if hmac.compare_digest(blob[len(_MAGIC) : _HEADER_BYTES], _tag(key, payload)):
            return payload
    if blob[: len(_OLD_MAGIC)] == _OLD_MAGIC:  # never trusted either; one warning for all of them, not one each
        global _warned_old_format
        if not _warned_old_format:
            _warned_old_format = True
            warnings.warn(
                f"lazygrad: discarded kernel cache entries in {directory} written by an older lazygrad (not "
                "authenticated); rebuilding them",
                RuntimeWarning,
                stacklevel=2,
            )
    else:
        warnings.warn(
            f"lazygrad: discarded a corrupted kernel cache entry {path} (damaged, or not written by this user's "
            "lazygrad for this kernel); rebuilding it",
            RuntimeWarning,
            stacklevel=2,
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
    blob = _MAGIC + _tag(key, payload) + payload
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")  # 0600
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, _path(directory, key))
    except OSError as e:
        _disable(f"cannot write to {directory}: {e}")
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
