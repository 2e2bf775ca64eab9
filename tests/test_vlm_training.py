"""VLM instruction tuning (training/vlm.py) and the VLM LoRA preset (training/lora.py): answer-only labels, image
positions masked, a short Trainer run lowers the loss and saves a folder that generates, exact match by generation,
LoRA on the projector and the decoder's own projections. Tiny configs on generated shapes scenes; CPU."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from ssmvl.modeling.processing_ssm_vlm import SsmVlmProcessor
from ssmvl.training.lora import lora_config_for, vlm_lora_targets
from ssmvl.training.shapes import build_shapes_tokenizer, make_shapes_qa_dataset
from ssmvl.training.vlm import (VqaCollator, chat_prompt, evaluate_vqa, shapes_image_processor, shapes_vlm,
                                train_vlm)


@pytest.fixture(scope="module")
def setup():
    tok = build_shapes_tokenizer()
    qa = make_shapes_qa_dataset(40, seed=0, image_size=48, split="train", question_types=("color", "shape", "position"))
    return tok, qa


def build(tok, decoder="mamba"):
    torch.manual_seed(0)
    model = shapes_vlm(tok, decoder, hidden=32, layers=1)
    return model, SsmVlmProcessor.from_config(model.config, shapes_image_processor(48), tok)


def test_collator_labels_only_the_answer(setup):
    tok, qa = setup
    model, proc = build(tok)
    rows = [qa[i] for i in range(3)]
    batch = VqaCollator(proc)(rows)
    image_id = model.config.image_token_id
    assert batch["pixel_values"].shape == (3, 3, 48, 48)
    for i, row in enumerate(rows):
        ids, labels, mask = batch["input_ids"][i], batch["labels"][i], batch["attention_mask"][i]
        assert (ids == image_id).sum() == model.config.num_image_tokens == 9
        assert (labels[ids == image_id] == -100).all()  # image positions carry no loss
        target = labels[labels != -100].tolist()
        assert target == tok(row["answer"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        prompt_len = len(proc(images=row["image"], text=chat_prompt(proc, row["question"]),
                              return_tensors=None)["input_ids"][0])
        assert (labels[:prompt_len] == -100).all() and labels[prompt_len] != -100
        assert mask.sum() == prompt_len + len(target) and (labels[mask == 0] == -100).all()


@pytest.mark.parametrize("decoder", ["mamba", "llama"])
def test_short_training_lowers_loss_and_saves_a_generating_folder(setup, decoder, tmp_path):
    tok, qa = setup
    model, proc = build(tok, decoder)
    collate = VqaCollator(proc)
    batch = collate([qa[i] for i in range(16)])
    with torch.no_grad():
        before = model(**batch).loss.item()
    tower = {n: p.detach().clone() for n, p in model.model.vision_tower.named_parameters()}
    result = train_vlm(model, proc, qa, tmp_path / "vlm", max_steps=30, lr=5e-3, batch_size=16,
                       disable_tqdm=True, logging_steps=100)
    # the recipe freezes the vision tower by default (freeze_vision=False trains it)
    assert all(torch.equal(p, tower[n]) for n, p in result.model.model.vision_tower.named_parameters())
    with torch.no_grad():
        after = result.model(**batch).loss.item()
    assert after < before * 0.7
    from transformers import AutoModelForImageTextToText, AutoProcessor

    reloaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm", trust_remote_code=True)
    proc2 = AutoProcessor.from_pretrained(tmp_path / "vlm", trust_remote_code=True)
    scores = evaluate_vqa(reloaded, proc2, qa.select(range(8)))
    assert scores["num_questions"] == 8 and 0.0 <= scores["exact_match"] <= 1.0
    assert {"exact_match_color", "exact_match_shape", "exact_match_position"} & set(scores)


def test_exact_match_counts_correct_answers(setup):
    tok, qa = setup
    model, proc = build(tok)
    sub = qa.select(range(6))
    from ssmvl.training import vlm as recipe

    answers = list(sub["answer"])
    original = recipe.answer_questions
    try:
        recipe.answer_questions = lambda *a, **k: answers[:3] + ["nothing"] * 3
        assert recipe.evaluate_vqa(model, proc, sub)["exact_match"] == pytest.approx(0.5)
    finally:
        recipe.answer_questions = original


def test_vlm_lora_preset_adapts_projector_and_decoder(setup):
    tok, qa = setup
    model, proc = build(tok)
    targets = vlm_lora_targets(model)
    assert any(t.startswith("model.projector.") for t in targets)
    assert any(t.endswith("mixer.x_proj") for t in targets) and any(t.endswith("mixer.dt_proj") for t in targets)
    assert not any(t.startswith("model.vision_tower") for t in targets) and "language_model.lm_head" not in targets
    batch = VqaCollator(proc)([qa[i] for i in range(2)])
    with torch.no_grad():
        base = model(**batch).logits
    peft_model = get_peft_model(model, lora_config_for(model, r=4, init_lora_weights=False))
    with torch.no_grad():
        adapted = peft_model(**batch).logits
    assert (adapted - base).abs().max() > 1e-4
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_main_job_vlm_step_runs_and_reports(tmp_path):
    from ssmvl.training.main_job import vlm_step

    summary = vlm_step(tmp_path, steps=4, scenes=20, test_scenes=5, batch_size=8, progress=False)
    assert summary["vlm_steps"] == 4 and 0.0 <= summary["vlm_exact_match"] <= 1.0
    assert {"vlm_exact_match_color", "vlm_exact_match_shape", "vlm_exact_match_position"} <= set(summary)
    assert (tmp_path / "vlm-shapes" / "config.json").is_file()
