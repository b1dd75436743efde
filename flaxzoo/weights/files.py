"""Where flaxzoo keeps files, and how it gets the Keras files it does not have.

* ``$FLAXZOO_HOME`` (default ``~/.flaxzoo``): ``checkpoints/`` (converted weights) and ``downloads/``.
* ``$KERAS_HOME/models`` (default ``~/.keras/models``): Keras' own cache, read (never written), so
  files a Keras user already has are not downloaded again.
* Downloads come from the Keras URLs (host overridable with ``$FLAXZOO_BASE_URL``), are verified
  against the published md5, and land atomically: a partial or failed download leaves no file behind.
"""

from __future__ import annotations

import http.client
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from flaxzoo.errors import DownloadError
from flaxzoo.weights.convert import md5sum


def flaxzoo_home() -> Path:
    return Path(os.environ.get("FLAXZOO_HOME") or "~/.flaxzoo").expanduser()


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _verified(path: Path, md5: str | None) -> bool:
    return path.is_file() and (md5 is None or md5sum(path) == md5)


def get_file(fname: str, url: str, md5: str | None = None, *, progress: bool = True) -> Path:
    """A local copy of ``url`` named ``fname`` whose md5 is ``md5`` (when given).

    Looks in ``$KERAS_HOME/models``, then ``$FLAXZOO_HOME/downloads``, then downloads into the latter.
    A cached copy that fails the md5 is ignored (Keras' cache) or replaced (ours).
    """
    if os.sep in fname or (os.altsep and os.altsep in fname) or fname in ("", ".", ".."):
        raise ValueError(f"invalid file name {fname!r}")
    for candidate in (keras_home() / "models" / fname, flaxzoo_home() / "downloads" / fname):
        if _verified(candidate, md5):
            return candidate
    return download(url, flaxzoo_home() / "downloads" / fname, md5, progress=progress)


def download(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    *,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 1.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking ``md5``; retries transient failures with backoff.

    Transient: connection errors, cut-off bodies, HTTP 5xx and 429. An md5 mismatch of a complete body
    is not retried (the server has another file).
    """
    dest = Path(dest)
    if not url.startswith(("https://", "http://", "file://")):
        raise DownloadError(f"{url}: unsupported URL scheme")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.part-", dir=dest.parent)
    os.close(fd)
    last_error: DownloadError | None = None
    try:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff * 2 ** (attempt - 1))
            try:
                with open(tmp, "wb") as out:
                    _fetch(url, out, timeout=timeout, progress=progress, label=dest.name)
                break
            except urllib.error.HTTPError as e:
                e.close()
                last_error = DownloadError(f"{url}: HTTP {e.code} {e.reason}")
                if e.code < 500 and e.code != 429:  # not transient
                    raise last_error from None
            except DownloadError as e:  # body cut off
                last_error = e
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                last_error = DownloadError(f"{url}: {getattr(e, 'reason', None) or e}")
        else:
            raise DownloadError(f"{last_error} (gave up after {retries + 1} attempts)")
        if md5 is not None and (got := md5sum(tmp)) != md5:
            raise DownloadError(f"{url}: md5 mismatch: got {got}, expected {md5}; the file was not kept")
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide a shared cache from others
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _fetch(url: str, out, *, timeout: float, progress: bool, label: str) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        done, shown = 0, -1
        while chunk := response.read(1 << 20):
            out.write(chunk)
            done += len(chunk)
            if progress and total:
                pct = 100 * done // total
                if pct != shown:
                    shown = pct
                    print(f"\rDownloading {label}: {pct:3d}% of {total / 1e6:.1f} MB", end="", file=sys.stderr)
        if progress and total:
            print(file=sys.stderr)
        if total and done != total:
            raise DownloadError(f"{url}: connection closed after {done} of {total} bytes")
