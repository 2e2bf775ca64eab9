"""Push a saved model folder to the Hugging Face Hub (with a model card) and pull a repo back.

``push_folder(local_dir, repo_id)`` renders ``README.md`` into the folder when it has none
(``ssmvl.conversion.model_card``), creates the repo if needed and uploads the folder with
``HfApi.upload_folder``. It only adds / updates files: nothing already in the repo is deleted (no
``delete_patterns``), so files others pushed (a README edited on the Hub, eval results, ...) survive.

Token: the ``token`` argument, else whatever ``huggingface_hub`` finds (``HF_TOKEN``, ``hf auth login``). It is
never printed or logged. Endpoint: the ``endpoint`` argument, else ``HF_ENDPOINT`` / huggingface.co.

CLI (wired as ``ssmvl push DIR REPO_ID``)::

    python -m ssmvl.conversion.hub DIR REPO_ID [--private] [--endpoint URL] [--message MSG]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

DEFAULT_COMMIT_MESSAGE = "Upload model with ssmvl"
# Never uploaded from a model folder: caches, editor/OS droppings, partial downloads.
IGNORE_PATTERNS = ["**/__pycache__/**", "*.pyc", ".DS_Store", "**/.DS_Store", "*.incomplete", "**/.cache/**",
                   ".ipynb_checkpoints/**"]


class PushError(ValueError):
    """A model folder that cannot be pushed (missing, not a folder, no config.json)."""


def _check_model_dir(local_dir) -> Path:
    path = Path(local_dir).expanduser()
    if not path.exists():
        raise PushError(f"Model folder {str(path)!r} does not exist.")
    if not path.is_dir():
        raise PushError(f"{str(path)!r} is not a folder; pass the folder written by save_pretrained.")
    if not (path / "config.json").is_file():
        raise PushError(f"Model folder {str(path)!r} has no config.json; pass a folder written by save_pretrained "
                        "(config.json + weights).")
    return path


def _api(endpoint: Optional[str], token: Optional[str]):
    from huggingface_hub import HfApi

    # endpoint=None -> huggingface_hub.constants.ENDPOINT (HF_ENDPOINT) read now, not at import time
    return HfApi(endpoint=endpoint, token=token)


def ensure_model_card(local_dir, repo_id: Optional[str] = None, card_kwargs: Optional[Dict[str, Any]] = None):
    """Write ``README.md`` into ``local_dir`` when missing; returns the path written or None when one existed."""
    from .model_card import write_model_card

    kwargs = dict(card_kwargs or {})
    if repo_id:
        kwargs.setdefault("repo_id", repo_id)
    return write_model_card(local_dir, **kwargs)


def push_folder(local_dir, repo_id: str, *, token: Optional[str] = None, private: bool = False,
                commit_message: str = DEFAULT_COMMIT_MESSAGE, endpoint: Optional[str] = None,
                card_kwargs: Optional[Dict[str, Any]] = None, revision: Optional[str] = None) -> str:
    """Upload the model folder ``local_dir`` to ``repo_id``; returns the repo URL.

    Adds a model card (``README.md``) to the folder first when it has none (``card_kwargs`` go to
    ``render_model_card``). Creates the repo (``exist_ok``; ``private`` only applies on creation). Files in the repo
    that the folder does not contain are left untouched.
    """
    path = _check_model_dir(local_dir)
    if not repo_id or repo_id.count("/") > 1 or repo_id.strip() != repo_id:
        raise PushError(f"Invalid repo id {repo_id!r}: expected 'name' or 'namespace/name'.")
    ensure_model_card(path, repo_id, card_kwargs)
    api = _api(endpoint, token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(folder_path=str(path), repo_id=repo_id, repo_type="model", commit_message=commit_message,
                      revision=revision, ignore_patterns=list(IGNORE_PATTERNS))
    return str(repo_url)


def pull(repo_id: str, local_dir=None, revision: Optional[str] = None, *, token: Optional[str] = None,
         endpoint: Optional[str] = None, allow_patterns: Optional[List[str]] = None) -> str:
    """Download a repo snapshot (``huggingface_hub.snapshot_download``); returns the local folder path."""
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=repo_id, revision=revision, local_dir=local_dir, token=token,
                             endpoint=endpoint, allow_patterns=allow_patterns)


def build_push_parser(prog: str = "ssmvl push") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description="Upload a saved model folder (config.json + weights + "
                                 "modeling code) to the Hugging Face Hub, adding a model card when it has none. "
                                 "Files already in the repo are never deleted.")
    ap.add_argument("dir", help="model folder written by save_pretrained / a converter")
    ap.add_argument("repo_id", help="'namespace/name' on the Hub")
    ap.add_argument("--private", action="store_true", help="create the repo private (when it does not exist)")
    ap.add_argument("--endpoint", default=None, help="Hub URL (default: HF_ENDPOINT or https://huggingface.co)")
    ap.add_argument("--message", "-m", default=DEFAULT_COMMIT_MESSAGE, help="commit message")
    ap.add_argument("--revision", default=None, help="branch to push to (default: main)")
    return ap


def main_push(argv: Optional[List[str]] = None) -> int:
    """``ssmvl push DIR REPO_ID [--private] [--endpoint URL] [--message MSG]``; prints the repo URL."""
    args = build_push_parser().parse_args(argv)
    try:
        url = push_folder(args.dir, args.repo_id, private=args.private, commit_message=args.message,
                          endpoint=args.endpoint, revision=args.revision)
    except PushError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # HfHubHTTPError, connection errors: their messages carry no token
        from huggingface_hub.errors import HfHubHTTPError

        if not isinstance(err, (HfHubHTTPError, OSError)):
            raise
        print(f"error: push to {args.repo_id!r} failed: {err}", file=sys.stderr)
        return 1
    print(url)
    return 0


main = main_push

if __name__ == "__main__":
    sys.exit(main_push())
