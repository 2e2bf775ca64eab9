"""bfloat16 mixed precision in the recipes: ``bf16=True`` reaches Trainer (``training_arguments``, every recipe through
its training keyword arguments, the CLI's ``--bf16``) and a recipe really trains under bf16 autocast on the CPU: the
layers compute in bfloat16, the weights stay float32 and change, the losses are finite. Two steps of tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from ssmvl.modeling.configuration_mamba_lm import MambaLMConfig
from ssmvl.modeling.configuration_vim import VimConfig
from ssmvl.training.cli import build_parser
from ssmvl.training.recipes import train_causal_lm, train_image_classifier, training_arguments


def test_training_arguments_pass_bf16(tmp_path):
    assert training_arguments(tmp_path, bf16=True).bf16 is True
    assert training_arguments(tmp_path).bf16 is False


@pytest.mark.parametrize("command", [["train-lm", "--out", "x"], ["train-image", "--out", "x"],
                                     ["train-video", "--out", "x"]])
def test_cli_bf16_flag(command):
    parser = build_parser()
    assert parser.parse_args(command + ["--bf16"]).bf16 is True
    assert parser.parse_args(command).bf16 is False


def _record_linear_dtypes(model, seen: set):
    """Forward hooks writing the output dtype of every nn.Linear into ``seen`` (training steps only)."""
    def hook(module, args, output):
        if module.training:
            seen.add(output.dtype)
    return [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]


def _check_bf16_run(model, metrics, seen, before):
    assert torch.bfloat16 in seen, f"no layer computed in bfloat16 during training (saw {seen})"
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights left float32"
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters()), "no weight changed"
    assert math.isfinite(metrics["train_loss"]) and metrics["global_step"] == 2


def test_causal_lm_recipe_trains_under_bf16_autocast(tmp_path):
    from ssmvl.modeling.modeling_mamba_lm import MambaLMForCausalLM

    torch.manual_seed(0)
    model = MambaLMForCausalLM(MambaLMConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2, state_size=4))
    ids = torch.randint(0, 32, (8, 12), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist(),
                              "attention_mask": torch.ones_like(ids).tolist()})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen: set = set()
    hooks = _record_linear_dtypes(model, seen)
    metrics = train_causal_lm(model, data, None, tmp_path / "lm", max_steps=2, batch_size=4, bf16=True,
                              save=False, save_strategy="no", disable_tqdm=True, warmup_ratio=0.0)
    for h in hooks:
        h.remove()
    assert metrics.trainer.args.bf16
    _check_bf16_run(model, metrics, seen, before)


def test_image_recipe_trains_under_bf16_autocast(tmp_path):
    from ssmvl.modeling.modeling_vim import VimForImageClassification

    torch.manual_seed(0)
    model = VimForImageClassification(VimConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                                state_size=4, num_labels=3))
    g = torch.Generator().manual_seed(1)
    data = Dataset.from_dict({"pixel_values": torch.randn(8, 3, 16, 16, generator=g).tolist(),
                              "labels": torch.randint(0, 3, (8,), generator=g).tolist()})
    data.set_format("torch")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    seen: set = set()
    hooks = _record_linear_dtypes(model, seen)
    metrics = train_image_classifier(model, data, None, tmp_path / "vim", max_steps=2, batch_size=4, bf16=True,
                                     save=False, save_strategy="no", disable_tqdm=True, warmup_ratio=0.0)
    for h in hooks:
        h.remove()
    _check_bf16_run(model, metrics, seen, before)
