"""Run Python code in a fresh subprocess where the ``ssmvl`` package cannot be imported: what a user who only has
torch + transformers sees when loading a saved folder with ``trust_remote_code=True``.

Isolation, from outside in: ``cwd`` is a temporary folder (never the repository), ``PYTHONPATH`` is removed,
``PYTHONNOUSERSITE=1``; inside, before the user code runs, a bootstrap drops the repository root (and ``''``) from
``sys.path``, removes the editable-install finders (setuptools' ``__editable__...finder``) from ``sys.meta_path`` and
puts a finder first that refuses ``ssmvl`` and ``ssmvl.*``; then it checks that ``import ssmvl`` raises ImportError
and that no ``ssmvl`` module is loaded. If ssmvl were importable, the subprocess exits with code 97 and
run_isolated fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
SSMVL_IMPORTABLE_EXIT = 97

_BOOTSTRAP = textwrap.dedent("""
    import importlib.abc as _abc, os as _os, sys as _sys
    _repo = {repo!r}
    _sys.path[:] = [p for p in _sys.path if p and _os.path.abspath(p) != _repo]
    _sys.meta_path[:] = [f for f in _sys.meta_path
                         if "__editable__" not in (getattr(f, "__module__", "") or "")
                         and "__editable__" not in type(f).__name__ and "_EditableFinder" not in type(f).__name__]
    class _BlockSsmvl(_abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ssmvl" or name.startswith("ssmvl."):
                raise ModuleNotFoundError("ssmvl is blocked in this isolated test process", name=name)
            return None
    _sys.meta_path.insert(0, _BlockSsmvl())
    try:
        import ssmvl
    except ImportError:
        pass
    else:
        print("ISOLATION FAILED: ssmvl importable from", getattr(ssmvl, "__file__", None), file=_sys.stderr)
        _sys.exit({code})
    if any(m == "ssmvl" or m.startswith("ssmvl.") for m in _sys.modules):
        print("ISOLATION FAILED: ssmvl modules loaded", file=_sys.stderr)
        _sys.exit({code})
    del _abc, _os, _repo
""")


def run_isolated(code: str, cwd, env_extra: Optional[Dict[str, str]] = None, check: bool = True,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``code`` (dedented) with ``python -c`` in ``cwd`` without access to ssmvl; returns the CompletedProcess
    (text mode, stdout/stderr captured). Always asserts the isolation held; with ``check`` also that it exited 0."""
    cwd = Path(cwd)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               HF_MODULES_CACHE=str(cwd / "hf_modules_cache"), PYTHONDONTWRITEBYTECODE="1")
    env.update(env_extra or {})
    script = _BOOTSTRAP.format(repo=str(REPO_ROOT), code=SSMVL_IMPORTABLE_EXIT) + "\n" + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", script], cwd=str(cwd), env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode != SSMVL_IMPORTABLE_EXIT, f"ssmvl was importable in the isolated process:\n{proc.stderr}"
    if check:
        assert proc.returncode == 0, (f"isolated process failed (exit {proc.returncode}):\n"
                                      f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc
