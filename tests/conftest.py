import os

# Keras is the reference in tests and must use the JAX backend; nothing may touch the network or ~.
os.environ.setdefault("KERAS_BACKEND", "jax")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_homes(tmp_path_factory, monkeypatch):
    """Every test gets empty FLAXZOO_HOME and KERAS_HOME, and an unroutable download host."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("FLAXZOO_HOME", str(home / "flaxzoo"))
    monkeypatch.setenv("KERAS_HOME", str(home / "keras"))
    monkeypatch.setenv("FLAXZOO_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    yield
