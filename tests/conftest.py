import os
import types

# Keras is the reference in tests and must use the JAX backend; nothing may touch the network or ~.
os.environ.setdefault("KERAS_BACKEND", "jax")
# The CLI and predict_fn turn on JAX's persistent compilation cache; here it would write every executable of the
# suite to disk (test_cli checks the cache in subprocesses that turn it on).
os.environ["FLAXZOO_COMPILATION_CACHE"] = "0"
# The suite compiles hundreds of model graphs (flaxzoo's and Keras', both through XLA). LLVM's -O0 halves
# the compile time; both sides are compiled alike, and their outputs stay equal (measured: 0.0 apart).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_homes(tmp_path_factory, monkeypatch):
    """Every test gets empty FLAXZOO_HOME and KERAS_HOME, and an unroutable download host."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("FLAXZOO_HOME", str(home / "flaxzoo"))
    monkeypatch.setenv("KERAS_HOME", str(home / "keras"))
    monkeypatch.setenv("FLAXZOO_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    # A test that reaches the download code by accident fails at once instead of sleeping through the
    # backoff (tests that check the backoff record the sleeps with test_download's `sleeps` fixture).
    from flaxzoo.weights import files

    monkeypatch.setattr(files, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    yield
    jax.clear_caches()  # compiled executables of finished tests: GBs over the suite otherwise


@pytest.fixture
def requested_files(monkeypatch):
    """Both weight resolvers (Keras' and flaxzoo's) record the file a constructor asks for, then raise
    ``keras_reference.Requested``: which file, without any network."""
    import keras_reference

    return keras_reference.record_requests(monkeypatch)


def pytest_collection_modifyitems(items):
    """With ``-n N --dist loadgroup`` (the README's command), all tests of one model run in one worker:
    the Keras reference models and .h5 files are cached per process, so they are built once."""
    for item in items:
        params = getattr(item, "callspec", None) and item.callspec.params
        model = params.get("name") if params else None
        item.add_marker(pytest.mark.xdist_group(model if isinstance(model, str) else item.module.__name__))
