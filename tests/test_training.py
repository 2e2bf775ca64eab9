"""Training recipes, LoRA presets, datasets, local metric and CLI (tiny configs; a few minutes on 2 CPU cores).
Full digits training to the accuracy targets is marked slow (run by `ssmvl demo` / `pytest -m slow`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from ssmvl.modeling import MambaLMConfig, MambaLMForCausalLM  # noqa: E402
from ssmvl.training import cli  # noqa: E402
from ssmvl.training.data import (  # noqa: E402
    build_digits_dataset, build_lm_dataset, build_text_corpus, shift_digits, shipped_text_documents,
    train_bpe_tokenizer,
)
from ssmvl.training.lora import LORA_TARGETS, adapted_module_names, count_parameters, lora_config_for  # noqa: E402
from ssmvl.training.recipes import (  # noqa: E402
    apply_lora, load_accuracy_metric, merge_and_unload, save_trained, train_causal_lm, train_image_classifier,
)

VOCAB = 300


@pytest.fixture(scope="module")
def tokenizer():
    docs = shipped_text_documents(max_chars=60_000)
    return train_bpe_tokenizer(docs, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def lm_data(tokenizer):
    docs = shipped_text_documents(max_chars=60_000)
    return build_lm_dataset(tokenizer, docs, block_size=32, eval_fraction=0.05)


def tiny_lm(vocab=VOCAB, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = MambaLMConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, state_size=4, pad_token_id=1,
                        bos_token_id=0, eos_token_id=0, **kw)
    return MambaLMForCausalLM(cfg).eval()


def lm_lora(model, r=4, init_lora_weights=False):
    return apply_lora(model, lora_config_for(model, r=r, alpha=2 * r, init_lora_weights=init_lora_weights))


# ---------------------------------------------------------------------------------------------------------------------
# LoRA on the Mamba LM
# ---------------------------------------------------------------------------------------------------------------------
def test_lora_targets_cover_ssm_projections():
    model = lm_lora(tiny_lm())
    names = adapted_module_names(model)
    kinds = {n.rsplit(".", 1)[-1] for n in names}
    assert kinds == {"in_proj", "x_proj", "dt_proj", "out_proj"}
    assert len(names) == 4 * 2  # every layer, every projection
    assert all(".mixer." in n for n in names)
    assert set(LORA_TARGETS["ssmvl_mamba"]) == kinds
    assert {"x_proj_b", "dt_proj_b"} <= set(LORA_TARGETS["ssmvl_vim"])
    cfg = lora_config_for(tiny_lm())
    assert str(cfg.task_type).endswith("CAUSAL_LM")


def test_lora_changes_outputs_and_merge_matches():
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, 24))
    base = tiny_lm()
    with torch.no_grad():
        ref = base(ids).logits.clone()
    model = lm_lora(base)  # non-zero B: the adapters act from the start
    model.eval()
    with torch.no_grad():
        adapted = model(ids).logits
    assert (adapted - ref).abs().max() > 1e-3, "LoRA adapters did not change the outputs"
    merged = merge_and_unload(model)
    assert type(merged).__name__ == "MambaLMForCausalLM"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        out = merged(ids).logits
    assert (out - adapted).abs().max() <= 1e-5


def test_lora_training_changes_outputs_and_adapter_roundtrip(tmp_path, lm_data):
    from peft import PeftModel

    ids = torch.as_tensor(lm_data["test"][:2]["input_ids"])
    base = tiny_lm()
    with torch.no_grad():
        ref = base(ids).logits.clone()
    model = lm_lora(base, init_lora_weights=True)  # standard init: B = 0, identity at the start
    with torch.no_grad():
        assert (model(ids).logits - ref).abs().max() < 1e-6
    params = count_parameters(model)
    assert 0 < params["trainable_percent"] < 100
    metrics = train_causal_lm(model, lm_data["train"], None, tmp_path / "out", max_steps=8, lr=1e-2, batch_size=8,
                              save=False, disable_tqdm=True, logging_steps=100)
    model = metrics.model.eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        adapted = model(ids).logits.clone()
    assert (adapted - ref).abs().max() > 1e-4, "training the LoRA adapters did not change the outputs"

    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(tiny_lm(), tmp_path / "adapter").eval()  # same seed -> same base weights
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, adapted, atol=1e-6)
    merged = merge_and_unload(model)
    with torch.no_grad():
        assert (merged(ids).logits - adapted).abs().max() <= 1e-5


def test_save_trained_peft_writes_merged_and_adapter(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = lm_lora(tiny_lm(), init_lora_weights=False).eval()
    ids = torch.randint(0, VOCAB, (1, 12))
    with torch.no_grad():
        adapted = model(ids).logits.clone()
    save_trained(model, tmp_path / "m", processor=tokenizer)
    assert (tmp_path / "m" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "m" / "model.safetensors").is_file()
    assert (tmp_path / "m" / "modeling_mamba_lm.py").is_file()  # code shipped for trust_remote_code
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m", trust_remote_code=True).eval()
    with torch.no_grad():
        assert (loaded(ids).logits - adapted).abs().max() <= 1e-5
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert tok("hello world")["input_ids"] == tokenizer("hello world")["input_ids"]


# ---------------------------------------------------------------------------------------------------------------------
# Trainer recipes
# ---------------------------------------------------------------------------------------------------------------------
def test_trainer_lowers_loss_and_resumes(tmp_path, lm_data, tokenizer):
    cfg = tiny_lm().config
    ckpt = tmp_path / "ckpt"
    m = train_causal_lm(cfg, lm_data["train"], lm_data["test"], tmp_path / "lm", tokenizer=tokenizer, max_steps=30,
                        lr=1e-2, batch_size=8, save_steps=15, checkpoint_dir=ckpt, disable_tqdm=True,
                        logging_steps=100, save_total_limit=None)
    assert m["perplexity"] < m["perplexity_before"]
    assert m["global_step"] == 30
    assert (ckpt / "checkpoint-15").is_dir() and (ckpt / "checkpoint-30").is_dir()
    assert any(p.name.endswith(".safetensors") for p in (ckpt / "checkpoint-15").iterdir())
    # saved with its tokenizer and code: loads with trust_remote_code
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "lm", trust_remote_code=True)
    AutoTokenizer.from_pretrained(tmp_path / "lm")

    # resume from the middle checkpoint: continues at step 15 and ends at the same place as the straight run
    import shutil

    shutil.rmtree(ckpt / "checkpoint-30")
    r = train_causal_lm(cfg, lm_data["train"], lm_data["test"], tmp_path / "lm2", tokenizer=tokenizer, max_steps=30,
                        lr=1e-2, batch_size=8, save_steps=15, checkpoint_dir=ckpt, resume_from_checkpoint=True,
                        disable_tqdm=True, logging_steps=100, evaluate_before=False, save=False)
    assert r["global_step"] == 30
    assert math.isclose(r["perplexity"], m["perplexity"], rel_tol=1e-3)


def test_image_classifier_recipe_lora_and_resume(tmp_path):
    vmamba = pytest.importorskip("ssmvl.modeling.modeling_vmamba")
    from ssmvl.modeling import VMambaConfig

    data = build_digits_dataset(16, max_train=96, max_test=48)
    cfg = VMambaConfig(image_size=16, embed_dim=16, depths=[1, 1], d_state=1, drop_path_rate=0.0, mlp_ratio=2.0,
                       num_labels=10)
    m = train_image_classifier(cfg, data["train"], data["test"], tmp_path / "base", epochs=2, lr=3e-3, batch_size=32,
                               disable_tqdm=True)
    assert 0.0 <= m["eval_accuracy"] <= 1.0
    assert m.model.config.id2label[3] == "3"
    assert isinstance(m.model, vmamba.VMambaForImageClassification)
    # resume: the last epoch checkpoint exists, a longer run continues from it
    r = train_image_classifier(cfg, data["train"], data["test"], tmp_path / "base", epochs=3, lr=3e-3,
                               batch_size=32, resume_from_checkpoint=True, disable_tqdm=True)
    assert r["global_step"] == 3 * 3
    # LoRA on the shifted task: < 100% trainable, merged model evaluated the same way
    shifted = build_digits_dataset(16, shift="invert", max_train=96, max_test=48)
    lora = lora_config_for(r.model, r=2, alpha=4)
    assert lora.modules_to_save == ["classifier"]
    l = train_image_classifier(r.model, shifted["train"], shifted["test"], tmp_path / "lora", epochs=1, lr=1e-2,
                               batch_size=32, lora=lora, disable_tqdm=True)
    assert l["trainable_percent"] < 100
    assert abs(l["merged_eval_accuracy"] - l["eval_accuracy"]) < 1e-9
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "lora" / "config.json").is_file()


def test_vim_lora_targets_include_backward_branch():
    pytest.importorskip("ssmvl.modeling.modeling_vim")
    from ssmvl.modeling import VimConfig, VimForImageClassification

    model = VimForImageClassification(VimConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                                state_size=4, num_labels=10)).eval()
    cfg = lora_config_for(model, r=2)
    assert cfg.modules_to_save == ["head"]
    peft_model = apply_lora(model, cfg)
    kinds = {n.rsplit(".", 1)[-1] for n in adapted_module_names(peft_model)}
    assert kinds == {"in_proj", "x_proj", "dt_proj", "out_proj", "x_proj_b", "dt_proj_b"}


# ---------------------------------------------------------------------------------------------------------------------
# data, metric, CLI
# ---------------------------------------------------------------------------------------------------------------------
def test_digits_dataset_builder():
    data = build_digits_dataset(32)
    assert len(data["train"]) == 1437 and len(data["test"]) == 360
    x = data["train"][0]
    assert tuple(x["pixel_values"].shape) == (3, 32, 32) and x["pixel_values"].dtype == torch.float32
    assert -1.0 <= float(x["pixel_values"].min()) and float(x["pixel_values"].max()) <= 1.0
    labels = np.asarray(data["test"]["label"])
    assert np.bincount(labels).min() >= 34  # stratified: every class present
    again = build_digits_dataset(32, with_pixel_values=False)
    assert again["test"]["label"] == data["test"]["label"]  # fixed split
    images = data["test"].with_format(None)["image"]
    assert images[0].size == (32, 32) and images[0].mode == "RGB"
    raw = np.arange(64, dtype=float).reshape(1, 8, 8) % 17
    assert np.allclose(shift_digits(raw, "invert"), 16 - raw)
    assert np.allclose(shift_digits(raw, "rotate")[0], np.rot90(raw[0]))
    inv = build_digits_dataset(32, shift="invert", max_train=4, max_test=4)
    assert torch.allclose(inv["test"][0]["pixel_values"], -data["test"][0]["pixel_values"], atol=0.02)


def test_text_corpus_and_tokenizer(tmp_path, tokenizer, lm_data):
    corpus = build_text_corpus(max_chars=20_000)
    assert len(corpus) > 5 and all(isinstance(t, str) and t for t in corpus["text"])
    assert len(tokenizer) == VOCAB
    text = "The quick brown fox jumps over the lazy dog."
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: lossless
    row = lm_data["train"][0]
    assert len(row["input_ids"]) == 32 and row["labels"] == row["input_ids"]
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == tokenizer(text)["input_ids"]


def test_local_accuracy_metric(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    metric = load_accuracy_metric()
    assert metric.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0]) == {"accuracy": 0.5}
    assert metric.compute(references=[0, 1], predictions=[0, 0], normalize=False) == {"accuracy": 1}
    weighted = metric.compute(references=[0, 1], predictions=[0, 0], sample_weight=[3, 1])["accuracy"]
    assert math.isclose(weighted, 0.75)


def test_cli_parses(capsys):
    parser = cli.build_parser()
    a = parser.parse_args(["train-image", "--model", "vim-tiny", "--data", "digits", "--epochs", "3", "--lora",
                           "--out", "x", "--resume"])
    assert (a.model, a.epochs, a.lora, a.out, a.resume) == ("vim-tiny", 3.0, True, "x", "last")
    a = parser.parse_args(["train-lm", "--out", "y", "--steps", "5", "--resume", "y/checkpoints/checkpoint-5"])
    assert a.steps == 5 and a.resume.endswith("checkpoint-5")
    a = parser.parse_args(["demo", "--quick"])
    assert a.command == "demo" and a.quick
    with pytest.raises(SystemExit):
        parser.parse_args(["train-image", "--data", "imagenet", "--out", "z"])
    cfg = cli.resolve_image_config("vim-digits")
    assert cfg.model_type == "ssmvl_vim" and cfg.num_labels == 10 and cfg.image_size == 32
    if Path(cli.CONFIGS_DIR / "vim-tiny.json").is_file():
        cfg = cli.resolve_image_config("vim-tiny", image_size=32)
        assert cfg.image_size == 32 and cfg.hidden_size == 192
    assert cli.resolve_image_config("some/model_dir") is None
    # convert-* / push hand their arguments to the conversion modules (imported lazily)
    assert cli._delegate("ssmvl.conversion.no_such_module", "main", []) == 2


@pytest.mark.slow
def test_digits_targets_vim_and_vmamba(tmp_path):
    """The issue's targets: >= 95% held-out for Vim and VMamba, LoRA on inverted digits >= 90% with < 5% trainable,
    merge keeps the accuracy."""
    from ssmvl.training.main_job import vision_step

    for family in ("vim", "vmamba"):
        res = vision_step(tmp_path, family, progress=False)
        assert res[f"{family}_accuracy"] >= 0.95
        assert res[f"{family}_lora_accuracy"] >= 0.90
        assert res[f"{family}_lora_trainable_percent"] < 5.0
        assert abs(res[f"{family}_lora_merged_accuracy"] - res[f"{family}_lora_accuracy"]) < 0.005


def test_main_job_push_and_reload_without_ssmvl(tmp_path, tokenizer, monkeypatch):
    """The demo's step (iii) on tiny models: push to the in-process local Hub, reload in a fresh process where ssmvl
    cannot be imported (AutoModelForCausalLM + generate, pipeline('image-classification'))."""
    pytest.importorskip("ssmvl.modeling.modeling_vmamba")
    if not (Path(__file__).parent / "hub_server.py").is_file():
        pytest.skip("tests/hub_server.py not available")
    from ssmvl.modeling import VMambaConfig, VMambaForImageClassification
    from ssmvl.training import main_job
    from ssmvl.training.data import make_digits_processor
    from ssmvl.training.recipes import generate_text

    assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1)  # what tiny_lm() uses
    lm = tiny_lm()
    lm.save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    sample = generate_text(lm, tokenizer, "The dataset", max_new_tokens=8)
    torch.manual_seed(0)
    vm = VMambaForImageClassification(VMambaConfig(image_size=32, embed_dim=16, depths=[1, 1], d_state=1,
                                                   drop_path_rate=0.0, num_labels=10))
    vm.save_pretrained(tmp_path / "vm")
    make_digits_processor(32).save_pretrained(tmp_path / "vm")
    summary = {"lm_dir": str(tmp_path / "lm"), "lm_sample": sample, "vmamba_dir": str(tmp_path / "vm"),
               "prompt": "The dataset"}
    import os

    before = os.environ.get("HF_ENDPOINT")
    monkeypatch.chdir(tmp_path)  # a relative output folder, as `ssmvl demo --out outputs/demo` passes it
    res = main_job.hub_step(Path("out"), summary)
    assert res["hub"].startswith("http://127.0.0.1")
    assert os.environ.get("HF_ENDPOINT") == before
    out = res["reload_output"]
    assert "ssmvl is not importable" in out
    assert "pipeline('image-classification', ssmvl-demo/vm)" in out
    assert "[fresh process] generated:" in out


def test_vmamba_lora_preset_reaches_every_ssm_projection():
    from peft import get_peft_model

    from ssmvl.modeling import VMambaConfig, VMambaForImageClassification
    from ssmvl.training.lora import adapted_module_names, lora_config_for

    model = VMambaForImageClassification(VMambaConfig(image_size=32, embed_dim=16, depths=[1, 1], d_state=1,
                                                      drop_path_rate=0.0, num_labels=10))
    lora = get_peft_model(model, lora_config_for(model, r=2))
    names = adapted_module_names(lora)
    ends = {n.split(".op.", 1)[1] for n in names if ".op." in n}
    assert ends == {"in_proj", "out_proj"} | {f"x_proj.{k}" for k in range(4)} | {f"dt_projs.{k}" for k in range(4)}
    assert len(names) == 2 * len(ends)  # every block of both stages
    assert lora.peft_config["default"].modules_to_save == ["classifier"]
