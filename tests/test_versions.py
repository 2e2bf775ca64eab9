"""The supported transformers range is stated once (modeling/hf_compat.py) and everywhere else agrees: pyproject, the
lock, the README, the model cards; and the transformers running the tests is inside it."""

from __future__ import annotations

import re
from pathlib import Path

import transformers
from packaging.specifiers import SpecifierSet

from ssmvl.conversion.model_card import render_model_card
from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM
from ssmvl.modeling.hf_compat import SUPPORTED_TRANSFORMERS, TESTED_TRANSFORMERS

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lock_and_readme_agree_with_hf_compat():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert f'"transformers{SUPPORTED_TRANSFORMERS}"' in pyproject
    lock = (ROOT / "requirements" / "lock.txt").read_text()
    assert re.search(rf"^transformers=={re.escape(TESTED_TRANSFORMERS[1])}$", lock, re.M)
    readme = (ROOT / "README.md").read_text()
    assert SUPPORTED_TRANSFORMERS in readme and all(v in readme for v in TESTED_TRANSFORMERS)
    assert all(v in SpecifierSet(SUPPORTED_TRANSFORMERS) for v in TESTED_TRANSFORMERS)


def test_running_transformers_is_supported():
    assert transformers.__version__ in SpecifierSet(SUPPORTED_TRANSFORMERS)


def test_model_card_states_the_range(tmp_path):
    MambaLMForCausalLM(MambaLMConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1)).save_pretrained(tmp_path)
    card = render_model_card(str(tmp_path), repo_id="me/tiny")
    assert f"transformers{SUPPORTED_TRANSFORMERS}" in card and TESTED_TRANSFORMERS[0] in card
