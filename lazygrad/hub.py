"""Pretrained weights in torchvision's files: found where torch.hub keeps them, downloaded there if missing.

The cache is torch.hub's own ($TORCH_HOME/hub/checkpoints), so weights PyTorch already downloaded are reused and
a machine without network can be given the file by hand. See docs/checkpoints.md.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# (url, file name) of torchvision's ImageNet weights; the name carries the first hex digits of the file's SHA-256.
RESNET18_IMAGENET1K_V1 = ("https://download.pytorch.org/models/resnet18-f37072fd.pth", "resnet18-f37072fd.pth")
RESNET34_IMAGENET1K_V1 = ("https://download.pytorch.org/models/resnet34-b627a593.pth", "resnet34-b627a593.pth")
RESNET50_IMAGENET1K_V1 = ("https://download.pytorch.org/models/resnet50-0676ba61.pth", "resnet50-0676ba61.pth")

KNOWN_WEIGHTS = {
    "resnet18": RESNET18_IMAGENET1K_V1,
    "resnet34": RESNET34_IMAGENET1K_V1,
    "resnet50": RESNET50_IMAGENET1K_V1,
}

_DOWNLOAD_TIMEOUT_S = 30  # per blocking socket operation, not for the whole download
_CHUNK_BYTES = 1 << 20


def torch_home() -> Path:
    """$TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch: torch.hub's rule."""
    cache_home = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(cache_home, "torch"))))


def checkpoint_dir() -> Path:
    """Where torch.hub.load_state_dict_from_url keeps downloaded weights."""
    return torch_home() / "hub" / "checkpoints"


def sha256_prefix_from_name(file_name: str) -> str | None:
    """'resnet18-f37072fd.pth' -> 'f37072fd': torchvision's convention; None when the name carries no hash."""
    match = re.search(r"-([0-9a-f]{8,64})\.[^-]*$", file_name)
    return match.group(1) if match else None


def load_url_to_file(
    url: str, file_name: str | None = None, expected_sha256_prefix: str | None = None, progress: bool = True
) -> Path:
    """The path of url's file in checkpoint_dir(), downloaded first if it is not there yet.

    A download is checked against expected_sha256_prefix, or else against the hash prefix in the file name.
    A file already in the cache is trusted as is (as torch.hub does), which is also how offline machines get one.
    """
    file_name = file_name or os.path.basename(urllib.parse.urlparse(url).path)
    destination = checkpoint_dir() / file_name
    if destination.is_file():
        return destination
    expected = (expected_sha256_prefix or sha256_prefix_from_name(file_name) or "").lower() or None
    destination.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"Downloading {url} to {destination}", file=sys.stderr)
    _download(url, destination, expected, progress)
    return destination


def load_state_dict_from_url(url: str, file_name: str | None = None, device=None, progress: bool = True) -> dict:
    """load_url_to_file, then lazygrad.serialization.load: {name: Tensor}."""
    from lazygrad.serialization import load

    return load(load_url_to_file(url, file_name, progress=progress), device=device)


def _download(url: str, destination: Path, expected_sha256_prefix: str | None, progress: bool) -> None:
    # A temporary file in the same directory, renamed at the end: the cache never holds a partial or bad file.
    handle, temporary_name = tempfile.mkstemp(prefix=destination.name + ".", suffix=".partial", dir=destination.parent)
    temporary = Path(temporary_name)
    try:
        with os.fdopen(handle, "wb") as out:
            digest = _fetch(url, out, destination, progress)
        if expected_sha256_prefix and not digest.startswith(expected_sha256_prefix):
            raise RuntimeError(
                f"the file downloaded from {url} has SHA-256 {digest}, which does not start with "
                f"{expected_sha256_prefix} as expected; it was deleted. The download may be corrupt: try again."
            )
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def _fetch(url: str, out, destination: Path, progress: bool) -> str:
    """Stream url into out; returns the SHA-256 hex digest of what was received."""
    sha256 = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "lazygrad"})
    try:
        with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            total = int(response.headers.get("Content-Length") or 0)
            bar = _ProgressBar(total) if progress else None
            received = 0
            while chunk := response.read(_CHUNK_BYTES):
                out.write(chunk)
                sha256.update(chunk)
                received += len(chunk)
                if bar:
                    bar.update(received)
            if bar:
                bar.finish(received)
    except urllib.error.HTTPError as error:
        raise RuntimeError(
            f"downloading {url} failed: the server answered HTTP {error.code} {error.reason}. "
            f"{_manual_download_hint(destination)}"
        ) from error
    except (urllib.error.URLError, ConnectionError, TimeoutError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", None) or error
        raise RuntimeError(
            f"could not download {url} ({reason}): this machine seems to be offline, or the server is unreachable. "
            f"{_manual_download_hint(destination)}"
        ) from error
    if total and received != total:
        raise RuntimeError(f"the download of {url} stopped after {received} of {total} bytes; try again")
    return sha256.hexdigest()


def _manual_download_hint(destination: Path) -> str:
    return (
        f"To use these weights without downloading them here, copy the file (same name) to {destination}; "
        f"set TORCH_HOME to use another cache directory than {torch_home()}."
    )


class _ProgressBar:
    """One carriage-return line on stderr: bar, percent, megabytes and speed; redrawn at most ten times a second."""

    WIDTH = 30

    def __init__(self, total_bytes: int):
        self.total = total_bytes
        self.started = time.monotonic()
        self.last_drawn = 0.0

    def update(self, received: int) -> None:
        now = time.monotonic()
        if now - self.last_drawn >= 0.1:
            self.last_drawn = now
            self._draw(received, now)

    def finish(self, received: int) -> None:
        self._draw(received, time.monotonic())
        sys.stderr.write("\n")
        sys.stderr.flush()

    def _draw(self, received: int, now: float) -> None:
        megabytes = received / 1e6
        speed = megabytes / max(now - self.started, 1e-6)
        if self.total:
            fraction = min(received / self.total, 1.0)
            filled = int(fraction * self.WIDTH)
            line = (
                f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction * 100:5.1f}% "
                f"{megabytes:.1f}/{self.total / 1e6:.1f} MB {speed:.1f} MB/s"
            )
        else:  # the server sent no length
            line = f"{megabytes:.1f} MB {speed:.1f} MB/s"
        sys.stderr.write("\r" + line)
        sys.stderr.flush()
