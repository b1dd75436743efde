"""weights="imagenet" end to end against a real HTTP server on 127.0.0.1.

The server publishes a random-weight Keras VGG16 (no top) file at the registry path of the real one
(its md5 patched into the spec); flaxzoo must download it, verify it, convert it, cache the checkpoint
atomically, and never leave a partial file or directory behind when anything goes wrong.
"""

from __future__ import annotations

import collections
import hashlib
import http.server
import json
import re
import shutil
import threading
import types
import urllib.parse

import h5py
import jax
import keras
import numpy as np
import pytest

import flaxzoo
from flaxzoo import imagenet_utils
from flaxzoo.errors import DownloadError, WeightFileError
from flaxzoo.registry import WeightFile
from flaxzoo.weights import cache_dir, checkpoint, files, flaxzoo_home, get_file, keras_home

import keras_reference as kr
import tolerances

CLASS_INDEX_FILE = kr.SHARED_DATA / "imagenet_class_index.json"
CLASS_INDEX_URL_PATH = "/" + imagenet_utils.CLASS_INDEX_PATH
MOBILENET_FILE = kr.SHARED_DATA / "mobilenet_2_5_224_tf_no_top.h5"


def md5_of(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def flipped(data: bytes, at: int | None = None) -> bytes:
    """``data`` with one byte inverted (in the middle unless ``at``)."""
    at = len(data) // 2 if at is None else at
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def leftovers(under: str = "") -> list[str]:
    """Everything in $FLAXZOO_HOME (or its folder ``under``), hidden entries included, except lock files
    and the bare folders that hold them and downloads: partial downloads and temp dirs show up here."""
    home = flaxzoo_home()
    folders = {"downloads", "checkpoints", "checkpoints/vgg16"}
    paths = (p.relative_to(home).as_posix() for p in (home / under).rglob("*"))
    return sorted(p for p in paths if not p.endswith(".lock") and p not in folders)


# ------------------------------------------------------------------------------------------------
# A file server: {url path: reply}; counts the requests per path
# ------------------------------------------------------------------------------------------------


def truncated(body: bytes, missing: int = 1000):
    """A reply announcing ``missing`` more bytes than it sends, then closing the connection."""

    def reply(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body) + missing))
        handler.end_headers()
        handler.wfile.write(body)

    return reply


def truncated_chunked(body: bytes):
    """A chunked reply whose only chunk announces more bytes than it sends, then closes."""

    def reply(handler):
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"%x\r\n" % (len(body) + 1000) + body)

    return reply


class FileServer:
    """``http.server.ThreadingHTTPServer`` on a free port of 127.0.0.1.

    ``files`` maps a URL path to a reply: bytes (200), an int (that HTTP error), a callable
    ``reply(handler)``, or a list of those, served in turn (the last one repeats).
    """

    def __init__(self):
        self.files: dict = {}
        self.requests: collections.Counter = collections.Counter()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def _next_reply(self, path):
        reply = self.files.get(path, 404)
        if isinstance(reply, list):
            reply = reply.pop(0) if len(reply) > 1 else reply[0]
        return reply

    def _handler_class(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = urllib.parse.urlsplit(self.path).path
                server.requests[path] += 1
                reply = server._next_reply(path)
                if callable(reply):
                    reply(self)
                elif isinstance(reply, int):
                    self.send_error(reply)
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)

            def log_message(self, *args):
                pass

        return Handler

    def stop(self):
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
            self._httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    """A running FileServer that every flaxzoo URL points at (FLAXZOO_BASE_URL)."""
    srv = FileServer()
    monkeypatch.setenv("FLAXZOO_BASE_URL", srv.url)
    yield srv
    srv.stop()


@pytest.fixture
def sleeps(monkeypatch):
    """Backoff sleeps of flaxzoo.weights.files, recorded instead of slept."""
    recorded = []
    monkeypatch.setattr(files, "time", types.SimpleNamespace(sleep=recorded.append))
    return recorded


# ------------------------------------------------------------------------------------------------
# The published VGG16 (no top): random Keras weights, built once per session
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def vgg16_notop():
    """(Keras model, legacy .h5 bytes, md5) of the randomised Keras VGG16(include_top=False)."""
    data = kr.reference_h5("vgg16", False).read_bytes()  # build + randomize + save_legacy_h5, cached
    return kr.reference_model("vgg16", False), data, md5_of(data)


@pytest.fixture
def publish(server, monkeypatch):
    """publish(served, md5): serve ``served`` at the registry path of VGG16's "notop" file and make
    ``md5`` its published md5. Returns the patched WeightFile."""
    spec = flaxzoo.get_spec("vgg16")

    def publish(served, md5: str) -> WeightFile:
        real = spec.weights["notop"]
        wf = WeightFile(real.fname, real.path, md5)
        monkeypatch.setitem(spec.weights, "notop", wf)
        server.files["/" + wf.path] = served
        return wf

    return publish


def vgg16_imagenet():
    return flaxzoo.VGG16(include_top=False, weights="imagenet")


def assert_matches_keras(keras_model, flax_model, variables):
    x = kr.reference_inputs("vgg16", 64)
    with jax.default_matmul_precision("highest"):
        ref = kr.run(keras_model, x)
        ours = np.asarray(jax.jit(flax_model.apply)(variables, x))
    assert ours.shape == ref.shape == (2, 2, 2, 512)
    tolerances.assert_features_close(ours, ref, variables)


def vgg16_cache():
    return cache_dir(flaxzoo.get_spec("vgg16"), "notop")


# ------------------------------------------------------------------------------------------------
# 1. Download, convert, cache; then the cache alone, and when it is rebuilt
# ------------------------------------------------------------------------------------------------


def test_imagenet_weights_are_downloaded_converted_cached_and_match_keras(server, publish, vgg16_notop):
    keras_model, data, md5 = vgg16_notop
    wf = publish(data, md5)

    model, variables = vgg16_imagenet()
    assert server.requests == {"/" + wf.path: 1}
    downloaded = flaxzoo_home() / "downloads" / wf.fname
    assert downloaded.read_bytes() == data
    assert checkpoint.is_checkpoint(vgg16_cache())
    record = checkpoint.read_metadata(vgg16_cache())
    assert (record["model"], record["variant"]) == ("vgg16", "notop")
    assert record["source"]["md5"] == md5
    assert_matches_keras(keras_model, model, variables)
    assert [p for p in leftovers() if not p.startswith("checkpoints/vgg16/notop/")] == [
        "checkpoints/vgg16/notop",
        f"downloads/{wf.fname}",
    ]

    server.stop()
    downloaded.unlink()  # the second call must not even need the .h5
    model, cached = vgg16_imagenet()
    assert server.requests == {"/" + wf.path: 1}
    jax.tree_util.tree_map(np.testing.assert_array_equal, cached, variables)
    assert_matches_keras(keras_model, model, cached)


def republished(data: bytes, tmp_path) -> bytes:
    """The same weights in a file with another md5, as when Keras republishes a file."""
    path = tmp_path / "republished.h5"
    path.write_bytes(data)
    with h5py.File(path, "r+") as f:
        f.attrs["republished"] = 1
    return path.read_bytes()


def test_checkpoint_converted_from_a_superseded_file_is_rebuilt(server, publish, vgg16_notop, tmp_path):
    _, data, md5 = vgg16_notop
    wf = publish(data, md5)
    vgg16_imagenet()
    new = republished(data, tmp_path)
    publish(new, md5_of(new))

    vgg16_imagenet()
    assert server.requests == {"/" + wf.path: 2}
    assert checkpoint.read_metadata(vgg16_cache())["source"]["md5"] == md5_of(new)


def test_broken_checkpoint_is_rebuilt_from_the_downloaded_file(server, publish, vgg16_notop):
    keras_model, data, md5 = vgg16_notop
    publish(data, md5)
    vgg16_imagenet()
    shutil.rmtree(vgg16_cache() / checkpoint.STATE_DIR)
    server.stop()

    model, variables = vgg16_imagenet()
    assert checkpoint.is_checkpoint(vgg16_cache())
    assert_matches_keras(keras_model, model, variables)


# ------------------------------------------------------------------------------------------------
# 2. md5 verification
# ------------------------------------------------------------------------------------------------


def test_corrupted_download_is_rejected_by_md5_and_leaves_nothing(server, publish, vgg16_notop, sleeps):
    _, data, md5 = vgg16_notop
    wf = publish(flipped(data), md5)

    with pytest.raises(DownloadError, match="md5") as info:
        vgg16_imagenet()
    assert isinstance(info.value, ValueError)
    assert wf.url in str(info.value) and md5 in str(info.value) and md5_of(flipped(data)) in str(info.value)
    assert server.requests["/" + wf.path] == 1, "a complete body with the wrong md5 is not worth refetching"
    assert leftovers() == []


# ------------------------------------------------------------------------------------------------
# 3. A failed conversion or checkpoint write caches nothing
# ------------------------------------------------------------------------------------------------


def vgg16_with_wrong_last_kernel(data: bytes, tmp_path) -> bytes:
    """The VGG16 file with block5_conv3's kernel one output channel short: fails after 12 good layers."""
    path = tmp_path / "broken.h5"
    path.write_bytes(data)
    with h5py.File(path, "r+") as f:
        group = f["block5_conv3"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        name = next(n for n in names if "kernel" in n)
        kernel = group[name][()]
        del group[name]
        group.create_dataset(name, data=kernel[..., :-1])
    return path.read_bytes()


@pytest.mark.parametrize("wrong_file", ["mobilenet", "vgg16_bad_kernel_shape"])
def test_conversion_failure_raises_weight_file_error_and_caches_nothing(
    wrong_file, server, publish, vgg16_notop, tmp_path
):
    if wrong_file == "mobilenet":
        served = MOBILENET_FILE.read_bytes()
    else:
        served = vgg16_with_wrong_last_kernel(vgg16_notop[1], tmp_path)
    wf = publish(served, md5_of(served))

    with pytest.raises(WeightFileError, match=re.escape(wf.fname)):
        vgg16_imagenet()
    assert server.requests["/" + wf.path] == 1
    assert not vgg16_cache().exists()
    assert leftovers("checkpoints") == []


def test_failure_while_writing_the_checkpoint_leaves_no_temp_dir(server, publish, vgg16_notop, monkeypatch):
    _, data, md5 = vgg16_notop
    publish(data, md5)

    def broken_dumps(*args, **kwargs):  # orbax has written state/ by now: fail before the rename
        raise OSError("disk full")

    with monkeypatch.context() as m:
        m.setattr(checkpoint, "json", types.SimpleNamespace(dumps=broken_dumps, loads=json.loads))
        with pytest.raises(OSError, match="disk full"):
            vgg16_imagenet()
    assert leftovers("checkpoints") == []

    server.stop()  # the next call succeeds from the downloaded file
    vgg16_imagenet()
    assert checkpoint.is_checkpoint(vgg16_cache())


# ------------------------------------------------------------------------------------------------
# 4. Keras' own cache
# ------------------------------------------------------------------------------------------------


def test_keras_cache_file_with_the_right_md5_is_used_without_any_request(server, publish, vgg16_notop):
    keras_model, data, md5 = vgg16_notop
    wf = publish(data, md5)
    keras_file = keras_home() / "models" / wf.fname
    keras_file.parent.mkdir(parents=True)
    keras_file.write_bytes(data)

    model, variables = vgg16_imagenet()
    assert server.requests == {}
    assert checkpoint.is_checkpoint(vgg16_cache())
    assert not (flaxzoo_home() / "downloads").exists()
    assert_matches_keras(keras_model, model, variables)


def test_keras_cache_file_with_a_wrong_md5_is_ignored_and_left_untouched(server, publish, vgg16_notop):
    """Like the 2016 ResNet50 file, which has the current file's name but other contents."""
    _, data, md5 = vgg16_notop
    wf = publish(data, md5)
    keras_file = keras_home() / "models" / wf.fname
    keras_file.parent.mkdir(parents=True)
    impostor = MOBILENET_FILE.read_bytes()
    keras_file.write_bytes(impostor)
    before = keras_file.stat()

    vgg16_imagenet()
    assert server.requests == {"/" + wf.path: 1}
    assert (flaxzoo_home() / "downloads" / wf.fname).read_bytes() == data
    assert keras_file.read_bytes() == impostor and keras_file.stat().st_mtime_ns == before.st_mtime_ns
    assert checkpoint.read_metadata(vgg16_cache())["source"]["md5"] == md5


@pytest.mark.parametrize("digest", ["md5", "sha256"])
def test_our_own_cached_download_with_a_wrong_digest_is_replaced(server, digest):
    body = b"the right contents"
    server.files["/some/file.bin"] = body
    stale = flaxzoo_home() / "downloads" / "file.bin"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale contents")

    expected = {"md5": md5_of(body)} if digest == "md5" else {"sha256": hashlib.sha256(body).hexdigest()}
    path = get_file("file.bin", server.url + "/some/file.bin", **expected, progress=False)
    assert path == stale and path.read_bytes() == body
    assert server.requests["/some/file.bin"] == 1


def test_sha256_published_files_are_verified_cached_and_converted_by_their_sha256(server, monkeypatch, vgg16_notop):
    """ConvNeXt's files carry a sha256 and no md5 (Keras' get_file takes either): downloads, Keras' cache and
    the converted checkpoint are checked against it."""
    keras_model, data, _ = vgg16_notop
    spec = flaxzoo.get_spec("vgg16")
    real = spec.weights["notop"]
    wrong = WeightFile(real.fname, real.path, None, sha256=hashlib.sha256(b"another file").hexdigest())
    monkeypatch.setitem(spec.weights, "notop", wrong)
    server.files["/" + real.path] = data
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        vgg16_imagenet()
    assert leftovers() == []

    wf = WeightFile(real.fname, real.path, None, sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(spec.weights, "notop", wf)
    model, variables = vgg16_imagenet()
    assert checkpoint.read_metadata(vgg16_cache())["source"]["sha256"] == wf.sha256
    assert_matches_keras(keras_model, model, variables)
    server.stop()  # the cache entry is recognised by its sha256: no request, no .h5 needed
    (flaxzoo_home() / "downloads" / wf.fname).unlink()
    vgg16_imagenet()


# ------------------------------------------------------------------------------------------------
# 5. HTTP failures
# ------------------------------------------------------------------------------------------------

BODY = bytes(range(256)) * 1000


def fetch(server, reply, md5=md5_of(BODY)):
    """get_file of a file served with ``reply``; returns the request count."""
    server.files["/data/file.bin"] = reply
    try:
        get_file("file.bin", server.url + "/data/file.bin", md5, progress=False)
    finally:
        assert leftovers() == []
    return server.requests["/data/file.bin"]


def test_http_404_fails_at_once(server, sleeps):
    with pytest.raises(DownloadError, match=r"/data/file\.bin: HTTP 404"):
        fetch(server, 404)
    assert server.requests["/data/file.bin"] == 1 and sleeps == []


def test_http_500_is_retried_with_exponential_backoff_then_fails(server, sleeps):
    with pytest.raises(DownloadError, match=r"HTTP 500.*gave up after 4 attempts"):
        fetch(server, 500)
    assert server.requests["/data/file.bin"] == 4
    assert sleeps == [1.0, 2.0, 4.0]


def test_transient_errors_then_success(server, sleeps):
    server.files["/data/file.bin"] = [503, truncated(BODY[:100]), BODY]
    path = get_file("file.bin", server.url + "/data/file.bin", md5_of(BODY), progress=False)
    assert path.read_bytes() == BODY
    assert server.requests["/data/file.bin"] == 3 and len(sleeps) == 2


@pytest.mark.parametrize("reply", [truncated, truncated_chunked], ids=["content_length", "chunked"])
def test_truncated_body_fails_and_leaves_no_partial_file(reply, server, sleeps):
    with pytest.raises(DownloadError, match="/data/file.bin"):
        fetch(server, reply(BODY[:5000]))
    assert server.requests["/data/file.bin"] == 4  # a cut connection is transient: retried


def test_connection_refused_is_a_download_error(server, sleeps):
    url = server.url + "/data/file.bin"
    server.stop()
    with pytest.raises(DownloadError, match=r"/data/file\.bin.*gave up after 4 attempts"):
        get_file("file.bin", url, md5_of(BODY), progress=False)
    assert leftovers() == []


# ------------------------------------------------------------------------------------------------
# 6. decode_predictions' class index
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_class_index(monkeypatch):
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", None)


def predictions():
    preds = np.full((2, 1000), 1e-4, np.float32)
    preds[0, [386, 101, 385]] = [0.8, 0.1, 0.05]  # African elephant, tusker, Indian elephant
    preds[1, [1, 2, 0]] = [0.6, 0.3, 0.05]  # goldfish, great white shark, tench
    return preds


def test_decode_predictions_fetches_and_verifies_the_class_index(server, fresh_class_index, monkeypatch):
    server.files[CLASS_INDEX_URL_PATH] = CLASS_INDEX_FILE.read_bytes()
    preds = predictions()

    decoded = imagenet_utils.decode_predictions(preds, top=3)
    assert server.requests == {CLASS_INDEX_URL_PATH: 1}
    assert decoded[0][0] == ("n02504458", "African_elephant", np.float32(0.8))
    assert [t[1] for t in decoded[0]] == ["African_elephant", "tusker", "Indian_elephant"]
    assert [t[1] for t in decoded[1]] == ["goldfish", "great_white_shark", "tench"]

    # Keras' own decode_predictions, given the same index, returns the same tuples
    from keras.src.applications import imagenet_utils as keras_imagenet_utils

    monkeypatch.setattr(keras_imagenet_utils, "CLASS_INDEX", json.loads(CLASS_INDEX_FILE.read_text()))
    assert decoded == keras.applications.imagenet_utils.decode_predictions(preds, top=3)

    imagenet_utils.decode_predictions(preds)  # loaded once
    assert server.requests == {CLASS_INDEX_URL_PATH: 1}


def test_decode_predictions_rejects_a_corrupted_class_index(server, fresh_class_index):
    server.files[CLASS_INDEX_URL_PATH] = flipped(CLASS_INDEX_FILE.read_bytes())
    with pytest.raises(DownloadError, match=imagenet_utils.CLASS_INDEX_MD5):
        imagenet_utils.decode_predictions(predictions())
    assert imagenet_utils.CLASS_INDEX is None
    assert leftovers() == []


def test_decode_predictions_uses_a_class_index_already_in_the_keras_cache(server, fresh_class_index):
    cached = keras_home() / "models" / imagenet_utils.CLASS_INDEX_FNAME
    cached.parent.mkdir(parents=True)
    shutil.copy(CLASS_INDEX_FILE, cached)
    top1 = imagenet_utils.decode_predictions(predictions(), top=1)[0][0]
    assert top1[:2] == ("n02504458", "African_elephant")
    assert server.requests == {}
