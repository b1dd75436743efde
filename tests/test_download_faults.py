"""Download faults beyond tests/test_download.py, against HTTP servers on 127.0.0.1 (never the network).

Stalled connections (read timeout, bounded retries), resuming a cut-off body with ``Range`` (and starting
over when the server cannot), what an interrupted or failed download leaves (nothing), https only (with
the explicit exceptions), cache names that cannot leave their folder, and four processes resolving the
same ``weights="imagenet"`` at once: one download, one conversion, one complete checkpoint.
"""

from __future__ import annotations

import errno
import io
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import flaxzoo
from flaxzoo.errors import DownloadError
from flaxzoo.weights import _load_imagenet, cache_dir, checkpoint, files, flaxzoo_home, get_file

from test_download import BODY, MOBILENET_FILE, FileServer, flipped, md5_of, server, sleeps  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
PATH = "/data/file.bin"
HALF = len(BODY) // 2


def downloads_leftovers() -> list[str]:
    """Everything in $FLAXZOO_HOME/downloads except complete files: temp files show up here."""
    folder = flaxzoo_home() / "downloads"
    return sorted(p.name for p in folder.glob("*") if p.name.startswith(".")) if folder.exists() else []


# ------------------------------------------------------------------------------------------------
# Replies (see FileServer): each records the request's Range and If-Range headers in ``seen``
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def seen():
    return []


@pytest.fixture
def release(server):
    """Set at teardown (before the server stops), to free the handler threads of stalled replies."""
    event = threading.Event()
    yield event
    event.set()


def record(seen, handler):
    seen.append((handler.headers.get("Range"), handler.headers.get("If-Range")))


def whole(body, seen, etag=None, delay=0.0):
    """200 with the whole body (Range ignored, as by a server without range support)."""

    def reply(handler):
        record(seen, handler)
        time.sleep(delay)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        if etag:
            handler.send_header("ETag", etag)
        handler.end_headers()
        handler.wfile.write(body)

    return reply


def cut(body, seen, at=HALF, etag=None):
    """200 announcing the whole body, sending ``at`` bytes of it, then closing the connection."""

    def reply(handler):
        record(seen, handler)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        if etag:
            handler.send_header("ETag", etag)
        handler.end_headers()
        handler.wfile.write(body[:at])

    return reply


def stalled(body, seen, release, at=HALF):
    """200 announcing the whole body, sending ``at`` bytes, then nothing with the socket left open."""

    def reply(handler):
        record(seen, handler)
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body[:at])
        handler.wfile.flush()
        release.wait(30)

    return reply


def ranged(body, seen, shift=0):
    """Honours ``Range: bytes=N-`` with a 206 (its Content-Range off by ``shift``: a broken server)."""

    def reply(handler):
        record(seen, handler)
        m = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        assert m, "a resumable reply was requested without a Range"
        start = int(m[1])
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start + shift}-{len(body) - 1}/{len(body)}")
        handler.send_header("Content-Length", str(len(body) - start))
        handler.end_headers()
        handler.wfile.write(body[start:])

    return reply


def error(code, seen):
    def reply(handler):
        record(seen, handler)
        handler.send_error(code)

    return reply


def fetch(server, replies, **kwargs):
    server.files[PATH] = replies
    return get_file("file.bin", server.url + PATH, md5_of(BODY), progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------
# 1. A stalled connection times out, is retried a bounded number of times, and leaves nothing
# ------------------------------------------------------------------------------------------------


def test_stalled_body_times_out_is_retried_with_backoff_and_leaves_nothing(
    server, sleeps, seen, release, monkeypatch
):
    monkeypatch.setenv("FLAXZOO_DOWNLOAD_TIMEOUT", "0.5")
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(server, stalled(BODY, seen, release))
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert server.url + PATH in message
    assert "timed out (0.5 s without data)" in message and "gave up after 4 attempts" in message
    assert f"after {HALF} of {len(BODY)} bytes" in message
    assert server.requests[PATH] == 4 and sleeps == [1.0, 2.0, 4.0]
    assert 4 * 0.5 <= elapsed < 15, "the timeout from $FLAXZOO_DOWNLOAD_TIMEOUT applies to each read"
    # every retry asked for the rest; the server sent the whole body again (200), so each started over
    assert seen == [(None, None)] + [(f"bytes={HALF}-", None)] * 3
    assert downloads_leftovers() == []


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf"])
def test_invalid_timeout_setting_is_an_error_naming_it_and_the_url(value, server, monkeypatch):
    monkeypatch.setenv("FLAXZOO_DOWNLOAD_TIMEOUT", value)
    with pytest.raises(DownloadError, match=re.escape(f"{server.url}{PATH}: FLAXZOO_DOWNLOAD_TIMEOUT={value!r}")):
        fetch(server, BODY)
    assert server.requests == {}


# ------------------------------------------------------------------------------------------------
# 2. Resume within a call
# ------------------------------------------------------------------------------------------------


def test_cut_off_body_is_resumed_with_a_range_request(server, sleeps, seen):
    path = fetch(server, [cut(BODY, seen, etag='"v1"'), ranged(BODY, seen)])
    assert path.read_bytes() == BODY  # and its md5 was verified by get_file
    assert seen == [(None, None), (f"bytes={HALF}-", '"v1"')]  # If-Range: only if the file is unchanged
    assert server.requests[PATH] == 2 and sleeps == [1.0]
    assert downloads_leftovers() == []


def test_stalled_body_is_resumed_after_the_timeout(server, sleeps, seen, release):
    path = fetch(server, [stalled(BODY, seen, release), ranged(BODY, seen)], timeout=0.5)
    assert path.read_bytes() == BODY
    assert seen == [(None, None), (f"bytes={HALF}-", None)]  # nothing received before the stall was lost


@pytest.mark.parametrize(
    "second, requests",
    [("whole", 2), ("416", 3), ("bad_content_range", 3)],
    ids=["200_instead_of_206", "416", "206_from_the_wrong_byte"],
)
def test_resume_refused_or_broken_starts_over_from_zero(second, requests, server, sleeps, seen):
    reply = {
        "whole": whole(BODY, seen),
        "416": error(416, seen),
        "bad_content_range": ranged(BODY, seen, shift=1),
    }[second]
    path = fetch(server, [cut(BODY, seen), reply, whole(BODY, seen)])
    assert path.read_bytes() == BODY
    assert server.requests[PATH] == requests
    assert seen[1] == (f"bytes={HALF}-", None)
    assert seen[2:] == [(None, None)] * (requests - 2)  # the file was restarted: no Range after that


def test_resumed_body_failing_md5_is_fetched_again_whole(server, sleeps, seen):
    """A resumed body may be spliced from two versions of the file: refetched whole, not rejected."""
    path = fetch(server, [cut(BODY, seen), ranged(flipped(BODY, HALF + 10), seen), whole(BODY, seen)])
    assert path.read_bytes() == BODY
    assert seen == [(None, None), (f"bytes={HALF}-", None), (None, None)]


def test_resumed_body_failing_md5_on_the_last_attempt_is_rejected(server, sleeps, seen):
    bad = flipped(BODY, HALF + 10)
    server.files[PATH] = [cut(BODY, seen), ranged(bad, seen)]
    url = server.url + PATH
    with pytest.raises(DownloadError, match=re.escape(f"{url}: md5 mismatch: got {md5_of(bad)}")):
        files.download(url, flaxzoo_home() / "downloads" / "file.bin", md5_of(BODY), progress=False, retries=1)
    assert downloads_leftovers() == [] and not (flaxzoo_home() / "downloads" / "file.bin").exists()


# ------------------------------------------------------------------------------------------------
# 3. Across calls: an interrupted or failed download leaves nothing, and the next call starts over
# ------------------------------------------------------------------------------------------------


class FailingWrites(io.FileIO):
    """The download's temp file, whose first write stores half the chunk then raises ``error``."""

    def __init__(self, fd, mode, error):
        super().__init__(fd, mode.replace("b", ""))
        self.error = error

    def write(self, data):
        super().write(data[: len(data) // 2])
        raise self.error


def test_keyboard_interrupt_mid_download_leaves_no_partial_file_and_the_next_call_starts_over(
    server, seen, monkeypatch
):
    with monkeypatch.context() as m:
        m.setattr(files, "open", lambda fd, mode: FailingWrites(fd, mode, KeyboardInterrupt()), raising=False)
        with pytest.raises(KeyboardInterrupt):
            fetch(server, whole(BODY, seen))
    assert downloads_leftovers() == [] and not (flaxzoo_home() / "downloads" / "file.bin").exists()

    assert fetch(server, whole(BODY, seen)).read_bytes() == BODY
    assert seen == [(None, None), (None, None)]  # no resume across calls (policy: files' docstring)


def test_failed_write_is_not_retried_and_names_the_file(server, sleeps, seen, monkeypatch):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(files, "open", lambda fd, mode: FailingWrites(fd, mode, full), raising=False)
    with pytest.raises(OSError) as info:
        fetch(server, whole(BODY, seen))
    assert not isinstance(info.value, DownloadError) and info.value.errno == errno.ENOSPC
    assert str(flaxzoo_home() / "downloads" / "file.bin") in str(info.value) and server.url + PATH in str(info.value)
    assert server.requests[PATH] == 1 and sleeps == []
    assert downloads_leftovers() == []


def test_temp_files_of_killed_downloads_are_removed_after_a_day(server):
    folder = flaxzoo_home() / "downloads"
    folder.mkdir(parents=True)
    old, live, other = (folder / n for n in (".file.bin.part-old", ".file.bin.part-live", ".other.bin.part-old"))
    for p in (old, live, other):
        p.write_bytes(b"partial")
    two_days_ago = time.time() - 2 * 86400
    for p in (old, other):
        os.utime(p, (two_days_ago, two_days_ago))

    assert fetch(server, BODY).read_bytes() == BODY
    assert downloads_leftovers() == [".file.bin.part-live", ".other.bin.part-old"]  # another download's: its own


# ------------------------------------------------------------------------------------------------
# 4. https only, unless the user pointed FLAXZOO_BASE_URL at an http mirror or allowed it
# ------------------------------------------------------------------------------------------------


def test_plain_http_is_refused_unless_it_is_the_base_url_or_allowed(server, monkeypatch):
    url = server.url + PATH
    server.files[PATH] = BODY
    monkeypatch.delenv("FLAXZOO_BASE_URL")
    with pytest.raises(DownloadError, match=re.escape(url) + ": refusing to download over plain http"):
        get_file("file.bin", url, md5_of(BODY), progress=False)
    with pytest.raises(DownloadError, match="plain http"):
        files.download(url, flaxzoo_home() / "x.bin", progress=False)
    monkeypatch.setenv("FLAXZOO_BASE_URL", "http://127.0.0.1:9")  # another host's override vouches for it only
    with pytest.raises(DownloadError, match="plain http"):
        get_file("file.bin", url, md5_of(BODY), progress=False)
    assert server.requests == {}

    assert get_file("file.bin", url, md5_of(BODY), progress=False, allow_insecure=True).read_bytes() == BODY
    monkeypatch.setenv("FLAXZOO_BASE_URL", server.url + "/")
    assert files.download(url, flaxzoo_home() / "y.bin", md5_of(BODY), progress=False).read_bytes() == BODY

    # a cached copy does not make the rule depend on the cache's state
    monkeypatch.delenv("FLAXZOO_BASE_URL")
    with pytest.raises(DownloadError, match="plain http"):
        get_file("file.bin", url, md5_of(BODY), progress=False)


def test_url_rules_without_any_request(monkeypatch, tmp_path):
    monkeypatch.setenv("FLAXZOO_BASE_URL", "http://mirror.test:80/keras")
    files.check_url("http://mirror.test:80/keras/a/b.h5")
    for refused in ("http://mirror.test:8080/keras/b.h5", "http://mirror.test:80/keras-evil/b.h5", "http://x/b"):
        with pytest.raises(DownloadError, match=re.escape(refused)):
            files.check_url(refused)
    with pytest.raises(DownloadError, match="ftp://mirror.test/b.h5: unsupported URL scheme"):
        files.check_url("ftp://mirror.test/b.h5", allow_insecure=True)
    monkeypatch.delenv("FLAXZOO_BASE_URL")
    files.check_url(flaxzoo.get_spec("vgg16").weights["notop"].url)  # the default host: https
    assert flaxzoo.get_spec("vgg16").weights["notop"].url.startswith("https://")
    # file:// is local (nothing in transit to tamper with): allowed, and md5-checked like any download
    source = tmp_path / "local.bin"
    source.write_bytes(BODY)
    got = files.download(source.as_uri(), tmp_path / "copy.bin", md5_of(BODY), progress=False)
    assert got.read_bytes() == BODY


def test_redirect_is_held_to_the_same_rule(server):
    """The rule applies to every hop, so an https URL could not be redirected to plain http either (a TLS
    server on 127.0.0.1 would need a certificate: the http→http case exercises the same check)."""
    other = FileServer()
    try:
        other.files[PATH] = BODY

        def to(location):
            def reply(handler):
                handler.send_response(302)
                handler.send_header("Location", location)
                handler.send_header("Content-Length", "0")
                handler.end_headers()

            return reply

        server.files["/moved"] = BODY
        path = fetch(server, to("/moved"))  # within FLAXZOO_BASE_URL: followed
        assert path.read_bytes() == BODY and server.requests["/moved"] == 1
        path.unlink()

        with pytest.raises(DownloadError) as info:
            fetch(server, to(other.url + PATH))
        assert f"{server.url}{PATH}: redirected to {other.url}{PATH}: refusing" in str(info.value)
        assert other.requests == {} and downloads_leftovers() == []
    finally:
        other.stop()


# ------------------------------------------------------------------------------------------------
# 5. Cache names cannot leave their folder
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fname", ["..", ".", "", "../evil.h5", "/tmp/evil.h5", "a/b.h5", "evil\0.h5"])
def test_get_file_refuses_names_that_leave_the_cache(fname, server):
    url = server.url + PATH
    with pytest.raises(DownloadError, match=re.escape(f"{url}: invalid cache file name {fname!r}")):
        get_file(fname, url, progress=False)
    assert server.requests == {} and not flaxzoo_home().exists()


@pytest.mark.parametrize("variant", ["..", ".", "", "../../x", "/tmp/x", "a/b", "a\\b", "x\0"])
def test_cache_dir_refuses_variants_that_leave_the_cache(variant):
    spec = flaxzoo.get_spec("mobilenet")
    with pytest.raises(ValueError, match=re.escape(repr(variant))):
        cache_dir(spec, variant)
    with pytest.raises(ValueError, match=re.escape(repr(variant))):
        _load_imagenet(spec, None, variant)  # before any lock file or download
    assert not flaxzoo_home().exists()


def test_cache_dir_refuses_a_model_name_that_leaves_the_cache():
    import dataclasses

    spec = dataclasses.replace(flaxzoo.get_spec("mobilenet"), name="../evil")
    with pytest.raises(ValueError, match=re.escape("'../evil'")):
        cache_dir(spec, "notop")
    assert cache_dir(flaxzoo.get_spec("mobilenet"), "notop") == flaxzoo_home() / "checkpoints/mobilenet/notop"


# ------------------------------------------------------------------------------------------------
# 6. Four processes resolve the same weights at once
# ------------------------------------------------------------------------------------------------

# MobileNet α=0.25 at 128 px, no top: the cheapest published file. Its no-top weights do not depend on
# the size, so the shared α=0.25/224 file serves; Keras publishes no md5 for MobileNet (nothing to patch).
SPEC = flaxzoo.get_spec("mobilenet")
VARIANT = "2_5_128_notop"

CHILD = r"""
import hashlib, sys, time
from pathlib import Path

import jax, numpy as np
import flaxzoo
from flaxzoo import weights

convert_file = weights.convert_file

def counted(*args, **kwargs):
    print("converting", flush=True)
    return convert_file(*args, **kwargs)

weights.convert_file = counted
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():  # all four start resolving together
    time.sleep(0.005)
start = time.time()
model, variables = flaxzoo.MobileNet(input_shape=(128, 128, 3), alpha=0.25, include_top=False, weights="imagenet")
digest = hashlib.sha256()
for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    digest.update(jax.tree_util.keystr(path).encode() + np.asarray(leaf).tobytes())
print("variables", digest.hexdigest())
print("span", start, time.time())
"""


def test_four_processes_resolving_the_same_weights_download_and_convert_once(server, seen, tmp_path):
    data = MOBILENET_FILE.read_bytes()
    wf = SPEC.weight_file(VARIANT)
    server.files["/" + wf.path] = whole(data, seen, delay=0.3)  # the first holds the lock a while
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}  # FLAXZOO_HOME, KERAS_HOME, FLAXZOO_BASE_URL: the test's
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(4)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(r), str(go)],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for r in ready
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(r.exists() for r in ready):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
            assert time.monotonic() < deadline, "the child processes did not start"
            time.sleep(0.01)
        go.touch()
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
    outs = [out.splitlines() for out, _ in results]
    assert server.requests == {"/" + wf.path: 1}
    assert sum(lines.count("converting") for lines in outs) == 1
    digests = {line for lines in outs for line in lines if line.startswith("variables ")}
    assert len(digests) == 1, digests
    spans = [[float(t) for t in line.split()[1:]] for lines in outs for line in lines if line.startswith("span ")]
    assert max(s for s, _ in spans) < min(e for _, e in spans), "the four resolutions overlapped"

    target = cache_dir(SPEC, VARIANT)
    assert checkpoint.is_checkpoint(target)
    assert checkpoint.read_metadata(target)["source"]["md5"] == md5_of(data)
    assert sorted(os.listdir(target.parent)) == [f".{VARIANT}.lock", VARIANT]
    assert os.listdir(flaxzoo_home() / "downloads") == [wf.fname]
    assert (flaxzoo_home() / "downloads" / wf.fname).read_bytes() == data
    temp = [p for p in flaxzoo_home().rglob("*") if ".part-" in p.name or ".tmp-" in p.name]
    assert temp == []
