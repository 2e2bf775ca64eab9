"""Writing a converted model folder without ever losing what a user saved.

``check_out_dir`` refuses a non-empty output folder unless ``overwrite`` (and always refuses the source itself);
``staged_output`` lets the converter write into a temporary folder next to the target and swaps it in only when
everything was written, so a failed conversion leaves the old folder untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]


def check_out_dir(out_dir: PathLike, overwrite: bool = False, source: Optional[PathLike] = None) -> None:
    out = Path(out_dir).resolve()
    if source is not None:
        src = Path(source).resolve()
        if out == src or out in src.parents:
            raise ValueError(f"--out {out_dir} is (or contains) the checkpoint folder or file {source}; choose another output "
                             "folder, the source must stay untouched.")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out_dir} exists and is a file; choose a folder path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"Output folder {out_dir} is not empty. Choose an empty or new folder, or pass "
                              "--overwrite (overwrite=True) to replace its contents with the converted model.")


@contextmanager
def staged_output(out_dir: PathLike, overwrite: bool = False, source: Optional[PathLike] = None) -> Iterator[Path]:
    """``with staged_output(out) as tmp: model.save_pretrained(tmp) ...`` -> ``tmp`` becomes ``out`` on success."""
    out = Path(out_dir)
    check_out_dir(out, overwrite, source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.converting-", dir=out.parent))
    try:
        yield tmp
        check_out_dir(out, overwrite, source)  # nothing appeared there meanwhile
        if out.exists():
            shutil.rmtree(out)  # only reached with overwrite=True or an empty folder
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_model_card(folder: Path, repo_id: str, metadata: dict) -> None:
    """README.md rendered by ``conversion/model_card.py`` from the saved folder; ``repo_id`` names the final folder /
    repo (the folder may still be a staging one). A card problem must not throw away a verified conversion."""
    from .model_card import render_model_card

    try:
        text = render_model_card(str(folder), **{"repo_id": repo_id, **metadata})
    except Exception as err:
        print(f"WARNING: render_model_card failed ({type(err).__name__}: {err}); no model card written.",
              file=sys.stderr)
        return
    (folder / "README.md").write_text(text)


def save_converted(out_dir: PathLike, model, report: dict, *, overwrite: bool = False,
                   source: Optional[PathLike] = None, processor=None, extra_files: Iterable[PathLike] = (),
                   card: Optional[dict] = None, push_to_hub: Optional[str] = None) -> Path:
    """The last step of every converter: ``save_pretrained`` (safetensors + modeling code), the processor, extra files
    (e.g. a tokenizer), ``parity_report.json`` and the model card (``card``: metadata for ``render_model_card``),
    written aside and swapped in (``staged_output``); then the push (``conversion/hub.py``) when ``push_to_hub``
    names a repo."""
    out = Path(out_dir)
    with staged_output(out, overwrite, source) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if processor is not None:
            processor.save_pretrained(tmp)
        for path in extra_files:
            shutil.copy2(path, tmp / Path(path).name)
        (tmp / "parity_report.json").write_text(json.dumps(report, indent=2))
        if card is not None:
            write_model_card(tmp, out.name, card)
    if push_to_hub:
        from .hub import push_folder

        push_folder(str(out), push_to_hub)
    return out
