"""Where flaxzoo keeps files, and how it gets the Keras files it does not have.

* ``$FLAXZOO_HOME`` (default ``~/.flaxzoo``): ``checkpoints/`` (converted weights) and ``downloads/``.
* ``$KERAS_HOME/models`` (default ``~/.keras/models``): Keras' own cache, read (never written), so
  files a Keras user already has are not downloaded again.
* Downloads come from the Keras URLs (host overridable with ``$FLAXZOO_BASE_URL``) and are verified
  against the published hash: an md5, or a sha256 (ConvNeXt's files), as Keras' ``get_file`` does.

Download policy:

* **https only.** Plain ``http://`` is refused (anyone on the path could swap the file, and MobileNet's
  files have no published md5), except below a ``$FLAXZOO_BASE_URL`` set explicitly to an ``http://``
  mirror, or with ``allow_insecure=True``. Redirects are held to the same rule, so an https URL cannot be
  downgraded. ``file://`` stays allowed: it is local (no transport to tamper with) and only ever comes
  from the caller or the user's own ``$FLAXZOO_BASE_URL``; redirects to it are refused (urllib's rule).
* **Timeouts.** ``timeout`` (seconds without data, per read; default ``$FLAXZOO_DOWNLOAD_TIMEOUT``, else 60)
  turns a stalled connection into a failed attempt.
* **Retries.** Connection errors, timeouts, cut-off bodies, HTTP 5xx and 429 are retried ``retries`` times
  with exponential backoff. Other HTTP errors and a hash mismatch of a body fetched in one piece are not.
* **Resume within a call.** After a cut-off or stalled body, the next attempt asks for the rest
  (``Range: bytes=N-``, with ``If-Range`` when the server gave an ETag or Last-Modified) and appends a
  ``206`` reply; any other reply (``200``: no range support, or the file changed) starts over from zero.
  A resumed body that fails its hash is fetched again whole, in case it was spliced from two versions.
* **Nothing partial is ever left.** The body goes to a hidden temp file beside the destination and is
  renamed into place only once complete and verified. A failure of any kind, KeyboardInterrupt included,
  deletes the temp file, so a new call starts from zero: there is no resume across calls (a half file
  of unknown provenance is not worth trusting). Only a process killed outright (SIGKILL, power loss) can
  leave a ``.<name>.part-*`` file; the next download of that name deletes those untouched for a day.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import http.client
import math
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from time import time as wall_clock  # not time.time: tests replace this module's `time` to record sleeps
from typing import BinaryIO

from flaxzoo.errors import DownloadError
from flaxzoo.progress import ProgressBar, megabytes

DEFAULT_TIMEOUT = 60.0
STALE_PART_AGE = 24 * 3600  # seconds; a live download writes its temp file at least once per timeout
CHUNK = 1 << 20



def file_digests(path: str | os.PathLike, algorithms=("md5",), chunk_size: int = 1 << 20) -> dict[str, str]:
    """``{algorithm: hex digest}`` of a file, every algorithm in one read."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            for h in hashes.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashes.items()}


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    return file_digests(path, ("md5",), chunk_size)["md5"]


def _expected(md5: str | None, sha256: str | None) -> tuple[str, str] | None:
    """The (algorithm, digest) a file is checked against: the sha256 where one is published, else the md5."""
    return ("sha256", sha256) if sha256 else ("md5", md5) if md5 else None

def flaxzoo_home() -> Path:
    return Path(os.environ.get("FLAXZOO_HOME") or "~/.flaxzoo").expanduser()


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or "~/.keras").expanduser()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path):
    """A temporary path beside ``path`` to write, renamed onto ``path`` when the block succeeds (readable as
    the umask allows) and removed otherwise: ``path`` is whole or untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide a shared file from others
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _verified(path: Path, md5: str | None, sha256: str | None = None) -> bool:
    expected = _expected(md5, sha256)
    return path.is_file() and (expected is None or file_digests(path, expected[:1])[expected[0]] == expected[1])


def check_url(url: str, allow_insecure: bool = False) -> None:
    """Raise a DownloadError unless flaxzoo may download ``url`` (see the module's policy)."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("https", "file"):
        return
    if scheme != "http":
        raise DownloadError(f"{url}: unsupported URL scheme (https only)")
    base = (os.environ.get("FLAXZOO_BASE_URL") or "").rstrip("/")
    if allow_insecure or (base and (url == base or url.startswith(base + "/"))):
        return
    raise DownloadError(
        f"{url}: refusing to download over plain http (the file could be tampered with in transit); use "
        "https, or set FLAXZOO_BASE_URL to this host explicitly, or pass allow_insecure=True"
    )


def get_file(
    fname: str,
    url: str,
    md5: str | None = None,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float | None = None,
    allow_insecure: bool = False,
) -> Path:
    """A local copy of ``url`` named ``fname`` whose md5 is ``md5`` or sha256 ``sha256`` (when given; the
    sha256 is checked where both are).

    Looks in ``$KERAS_HOME/models``, then ``$FLAXZOO_HOME/downloads``, then downloads into the latter.
    A cached copy that fails the hash is ignored (Keras' cache) or replaced (ours).
    """
    # The name is joined to cache folders: it must not leave them (or be cut short by a NUL in the OS call).
    seps = {os.sep, os.altsep, "\0"} - {None}
    if fname in ("", ".", "..") or any(s in fname for s in seps):
        raise DownloadError(f"{url}: invalid cache file name {fname!r} (a plain file name is required)")
    check_url(url, allow_insecure)  # before the caches, so the rule does not depend on what is cached
    for candidate in (keras_home() / "models" / fname, flaxzoo_home() / "downloads" / fname):
        if _verified(candidate, md5, sha256):
            return candidate
    dest = flaxzoo_home() / "downloads" / fname
    return download(
        url, dest, md5, sha256=sha256, progress=progress, timeout=timeout, allow_insecure=allow_insecure
    )


def _timeout(url: str, timeout: float | None) -> float:
    if timeout is None:
        text = os.environ.get("FLAXZOO_DOWNLOAD_TIMEOUT") or ""
        try:
            timeout = float(text) if text.strip() else DEFAULT_TIMEOUT
        except ValueError:
            timeout = math.nan
        if not (0 < timeout < math.inf):
            raise DownloadError(f"{url}: FLAXZOO_DOWNLOAD_TIMEOUT={text!r} is not a positive number of seconds")
    elif not (0 < timeout < math.inf):
        raise DownloadError(f"{url}: timeout={timeout!r} is not a positive number of seconds")
    return timeout


def _remove_stale_parts(dest: Path) -> None:
    """Delete temp files of ``dest`` left by killed processes (untouched for a day, so none is live)."""
    for part in dest.parent.glob(f".{glob.escape(dest.name)}.part-*"):
        with contextlib.suppress(OSError):
            if wall_clock() - part.stat().st_mtime > STALE_PART_AGE:
                part.unlink()


def download(
    url: str,
    dest: str | os.PathLike,
    md5: str | None = None,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    allow_insecure: bool = False,
) -> Path:
    """Download ``url`` to ``dest`` atomically, checking ``md5`` or ``sha256``; see the module's policy.

    ``timeout``: seconds a read may wait for data (default ``$FLAXZOO_DOWNLOAD_TIMEOUT``, else 60).
    ``retries``: further attempts after a transient failure, waiting ``backoff * 2**k`` seconds before each.
    """
    dest = Path(dest)
    check_url(url, allow_insecure)
    timeout = _timeout(url, timeout)
    expected = _expected(md5, sha256)
    opener = urllib.request.build_opener(_Redirects(allow_insecure))
    dest.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.part-", dir=dest.parent)
    try:
        with open(fd, "r+b") as out:
            part, last_error = _Partial(out), None
            for attempt in range(retries + 1):
                if attempt:
                    time.sleep(backoff * 2 ** (attempt - 1))
                try:
                    _fetch(opener, url, part, dest, timeout=timeout, progress=progress)
                except _Transient as e:
                    last_error = e
                    continue
                out.flush()
                if expected is None or (got := file_digests(tmp, expected[:1])[expected[0]]) == expected[1]:
                    break
                mismatch = f"{url}: {expected[0]} mismatch: got {got}, expected {expected[1]}"
                if part.pieces == 1 or attempt == retries:  # one piece: the server has another file
                    raise DownloadError(f"{mismatch}; the file was not kept")
                last_error = DownloadError(f"{mismatch} (of a resumed download)")
                part.restart()
            else:
                raise DownloadError(f"{last_error} (gave up after {retries + 1} attempts)")
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide a shared cache from others
        os.replace(tmp, dest)
    finally:  # also on KeyboardInterrupt: no partial file survives the call
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest


class _Transient(DownloadError):
    """A failed attempt worth retrying."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, held to check_url's rule (else an https URL could redirect to plain http)."""

    def __init__(self, allow_insecure: bool):
        self.allow_insecure = allow_insecure

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            check_url(newurl, self.allow_insecure)
        except DownloadError as e:
            fp.close()
            raise DownloadError(f"{req.full_url}: redirected to {e}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclasses.dataclass
class _Partial:
    """The temp file of a download, kept across attempts so that a cut-off body can be resumed."""

    out: BinaryIO
    validator: str | None = None  # ETag or Last-Modified of the reply that began the body, for If-Range
    pieces: int = 0  # replies the body was assembled from

    @property
    def size(self) -> int:
        return self.out.tell()

    def restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.validator, self.pieces = None, 0


def _number(text: str | None) -> int:
    try:
        return max(int(text or 0), 0)
    except ValueError:
        return 0


@contextlib.contextmanager
def _network(url: str, part: _Partial, timeout: float, total: list[int]):
    """Network failures → _Transient (retried) or DownloadError, each naming ``url``; other errors, e.g.
    writing the temp file, pass through."""
    have = part.size
    try:
        yield
    except DownloadError:
        raise
    except urllib.error.HTTPError as e:
        e.close()
        error = f"{url}: HTTP {e.code} {e.reason}"
        if e.code == 416 and have:  # our Range starts past the end: the file changed; start over
            part.restart()
            raise _Transient(f"{error} for bytes={have}-") from None
        if e.code >= 500 or e.code == 429:
            raise _Transient(error) from None
        raise DownloadError(error) from None
    except (TimeoutError, urllib.error.URLError, http.client.HTTPException, OSError) as e:
        reason = getattr(e, "reason", None) or e
        if isinstance(reason, TimeoutError):
            reason = f"timed out ({timeout:g} s without data)"
        of = f" of {total[0]}" if total[0] else ""
        raise _Transient(f"{url}: {reason} (after {part.size}{of} bytes)") from None


def _fetch(opener, url: str, part: _Partial, dest: Path, *, timeout: float, progress: bool) -> None:
    """One attempt: fetch ``url`` into ``part``, from where it stopped when the server can resume."""
    request = urllib.request.Request(url)
    have = part.size
    if not have:
        part.restart()  # nothing kept from earlier replies
    if have and url.lower().startswith(("http://", "https://")):
        request.add_header("Range", f"bytes={have}-")
        if part.validator:
            request.add_header("If-Range", part.validator)
    total = [0]  # known length of the whole file, for messages
    bar = None
    try:
        with _network(url, part, timeout, total):
            response = opener.open(request, timeout=timeout)
        with response:
            if getattr(response, "status", None) == 206:
                content_range = response.headers.get("Content-Range") or ""
                m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", content_range.strip())
                if not m or int(m[1]) != have:
                    part.restart()
                    raise _Transient(f"{url}: 206 reply with Content-Range {content_range!r} to bytes={have}-")
                total[0] = int(m[3]) if m[3] != "*" else 0
            else:  # a whole body: no range support, or the file changed (If-Range)
                part.restart()
                headers = response.headers
                etag = headers.get("ETag")
                part.validator = etag if etag and not etag.startswith("W/") else headers.get("Last-Modified")
                total[0] = _number(headers.get("Content-Length"))
            part.pieces += 1
            bar = ProgressBar(f"Downloading {dest.name}", total[0], unit="B", amount=megabytes, enabled=progress,
                              initial=part.size)  # fmt: skip
            while True:
                with _network(url, part, timeout, total):
                    # read1: whatever has arrived, so a stall loses nothing received (it is resumed from)
                    chunk = response.read1(CHUNK)
                if not chunk:
                    break
                try:
                    part.out.write(chunk)
                except OSError as e:  # not retried; named after the file, not the temp file
                    raise OSError(e.errno, f"{e.strerror} (writing {url})", str(dest)) from e
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    if total[0] and part.size != total[0]:
        raise _Transient(f"{url}: connection closed after {part.size} of {total[0]} bytes")
