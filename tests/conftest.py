"""Shared pytest set-up."""

# --- ssmvl from a bare checkout ----------------------------------------------------------------------------------
# On a machine where the package is not installed (the GPU device gets a plain copy of the repository), map the
# repository root as the package `ssmvl` so `from ssmvl.modeling import ...` works in the tests.
import importlib.util
import sys
from pathlib import Path

try:
    import ssmvl  # noqa: F401
except ImportError:
    _root = Path(__file__).resolve().parent.parent
    _spec = importlib.util.spec_from_file_location("ssmvl", _root / "__init__.py",
                                                   submodule_search_locations=[str(_root)])
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["ssmvl"] = _module
    _spec.loader.exec_module(_module)


# =====================================================================================================================
# Local Hugging Face Hub endpoint (tests/hub_server.py)
#
#   hub_server   (session)  the running HubServer; .url, .hub.files(repo_id), .hub.repos, .hub.requests
#   hub_endpoint (session)  its URL, e.g. "http://127.0.0.1:41234"
#   hub_env      (function) points huggingface_hub / transformers in THIS process at the local endpoint with a fresh
#                           HF_HOME under tmp_path (env vars + the constants huggingface_hub read at import time);
#                           returns {"endpoint", "home", "env"}: pass `env` (or hub_env_vars(url, other_home)) to a
#                           subprocess, e.g. tests/isolated.py's run_isolated(..., env_extra=env).
# =====================================================================================================================
import pytest  # noqa: E402

_TESTS_DIR = str(Path(__file__).resolve().parent)
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)


def hub_env_vars(endpoint: str, home) -> dict:
    """Env vars for a (sub)process that talks to the local hub with its own empty cache under ``home``."""
    home = Path(home)
    return {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_MODULES_CACHE": str(home / "modules"),
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        # Not required by the server (it never offers Xet/LFS), but keeps uploads on the plain single-commit path.
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }


@pytest.fixture(scope="session")
def hub_server():
    from hub_server import HubServer

    server = HubServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def hub_endpoint(hub_server):
    return hub_server.url


@pytest.fixture
def hub_env(hub_endpoint, tmp_path, monkeypatch):
    home = tmp_path / "hf_home"
    home.mkdir()
    env = hub_env_vars(hub_endpoint, home)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(key, raising=False)

    from huggingface_hub import constants

    patches = {
        "ENDPOINT": hub_endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub_endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": env["HF_HOME"],
        "HF_HUB_CACHE": env["HF_HUB_CACHE"],
        "HUGGINGFACE_HUB_CACHE": env["HF_HUB_CACHE"],
        "HF_XET_CACHE": env["HF_XET_CACHE"],
        "HF_ASSETS_CACHE": env["HF_ASSETS_CACHE"],
        "HF_TOKEN_PATH": env["HF_TOKEN_PATH"],
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
    }
    for name, value in patches.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    # the module-level HfApi behind huggingface_hub.create_repo/upload_folder/... captured ENDPOINT at import time
    import huggingface_hub.hf_api as hf_api

    monkeypatch.setattr(hf_api.api, "endpoint", hub_endpoint)
    return {"endpoint": hub_endpoint, "home": home, "env": env}
# ============================================ end of the local Hub block ============================================
