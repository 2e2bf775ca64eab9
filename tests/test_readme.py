"""The README's examples, run as a user would copy them: every ```python block in order in one fresh process, and
every ```bash block line by line, in one temporary folder. Blocks whose first line is ``make ...`` (the two set-up
commands, which this suite is itself run by) are skipped. The checkpoints the conversion examples name are created
first with random weights in the original layouts and shapes (nothing can be downloaded here), and `ssmvl push` goes
to the local Hub endpoint."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import hub_env_vars

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(python|bash)\n(.*?)```", README, flags=re.DOTALL)


def make_original_checkpoints(folder: Path):
    """The files named by the README's conversion commands, with the original key names and shapes."""
    import json

    from test_mamba_lm import SS_CONFIG, fake_state_spaces_state_dict
    from test_vim import official_state_dict as vim_official
    from test_vmamba import official_state_dict as vmamba_official

    from ssmvl.conversion.convert_vmamba_to_hf import load_variant_config

    mamba = folder / "state-spaces-mamba-130m"  # a (tiny) state-spaces folder: config.json + pytorch_model.bin
    mamba.mkdir()
    (mamba / "config.json").write_text(json.dumps(SS_CONFIG))
    torch.save(fake_state_spaces_state_dict(), mamba / "pytorch_model.bin")
    torch.save({"model": vim_official(d=384, depth=24, n=16, patch=16, img=224, classes=1000)},
               folder / "vim_s_midclstok_80p5acc.pth")
    torch.save({"model": vmamba_official(load_variant_config("vmamba-tiny"))},
               folder / "vssm1_tiny_0230s_ckpt_epoch_264.pth")


def bash_commands(block: str):
    """Lines of a bash block without comments (a trailing `# ...` is a comment)."""
    for line in block.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith("#"):
            yield line


def test_readme_has_the_two_setup_commands_first():
    first = BLOCKS[0]
    assert first[0] == "bash"
    assert [c.split()[0:2] for c in bash_commands(first[1])] == [["make", "demo"], ["make", "test"]]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_readme_examples_run(tmp_path, hub_endpoint):
    make_original_checkpoints(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTHONPATH"))}
    env.update(hub_env_vars(hub_endpoint, tmp_path / "hf_home"))
    env.update(HF_TOKEN="hf_local_test_token", TOKENIZERS_PARALLELISM="false")
    bindir = Path(sys.executable).parent
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"  # the `ssmvl` console script of this environment

    python_code = "\n\n".join(code for kind, code in BLOCKS if kind == "python")
    ran_python = False
    for kind, code in BLOCKS:
        if kind == "bash":
            for command in bash_commands(code):
                if command.startswith("make "):
                    continue
                if not ran_python:  # the python examples build `tiny-mamba`, which the shell ones use
                    _run([sys.executable, "-c", python_code], tmp_path, env)
                    ran_python = True
                _run(shlex.split(command), tmp_path, env)
    if not ran_python:
        _run([sys.executable, "-c", python_code], tmp_path, env)
    assert (tmp_path / "tiny-mamba" / "config.json").is_file()
    for out in ("mamba-130m-ssmvl", "vim-small-ssmvl", "vmamba-tiny-ssmvl"):
        assert (tmp_path / out / "model.safetensors").is_file(), out
        assert (tmp_path / out / "parity_report.json").is_file(), out


def _run(argv, cwd, env):
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"README example failed: {' '.join(argv)[:300]}\n--- stdout ---\n{proc.stdout[-4000:]}\n"
                    f"--- stderr ---\n{proc.stderr[-4000:]}")
    assert "hf_local_test_token" not in proc.stdout + proc.stderr  # the token is never printed
