"""Instruction tuning of the ssmvl VLM (``SsmVlmForConditionalGeneration``) with ``transformers.Trainer``, and its
exact-match evaluation by generation.

* ``VqaCollator``: (image, question, answer) rows -> a batch. The prompt is the chat template with the question and
  one image part (``<s>user: what color is the circle? <image> assistant:``; question first, see ``chat_prompt``),
  expanded by the processor to the model's
  image tokens; the target is the answer followed by ``</s>``. Labels are -100 on the prompt and on every image
  position, so the loss is on the answer only; right padding (masked) for training.
* ``train_vlm``: Trainer with those batches; the vision tower frozen by default (``freeze_vision=False`` trains it), optional LoRA on
  the decoder and the projector (``training.lora.lora_config_for`` knows the VLM's targets), saving a folder that
  loads with ``trust_remote_code`` and without ssmvl (model + processor).
* ``evaluate_vqa``: greedy generation from left-padded prompts, answers cut at ``</s>``, exact match with the local
  ``evaluate`` module ``training/metrics/exact_match.py``, overall and per question type.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence, Union

import numpy as np
import torch

from ..modeling.configuration_ssm_vlm import SsmVlmConfig
from ..modeling.modeling_ssm_vlm import SsmVlmForConditionalGeneration
from .distributed import prepare_for_fsdp
from .recipes import RecipeResult, apply_lora, save_trained, training_arguments

EXACT_MATCH_METRIC_PATH = Path(__file__).resolve().parent / "metrics" / "exact_match.py"
ATTRIBUTES = ("color", "shape", "position")  # the question types of the shapes attribute QA


def chat_prompt(processor, question: str, question_first: bool = True, media: str = "image") -> str:
    """The user turn with one image (``media="video"``: one video) and ``question``, ready for the assistant's answer.
    ``question_first`` puts the question before the image: a recurrent (Mamba) decoder reads the image tokens once, in
    order, so it must know what to look for before it sees them (an attention decoder can look back either way)."""
    parts = [{"type": media}, {"type": "text", "text": question}]
    messages = [{"role": "user", "content": parts[::-1] if question_first else parts}]
    return processor.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class VqaCollator:
    """Rows with ``image`` (PIL), ``question`` and ``answer`` -> ``input_ids``, ``attention_mask``, ``labels``,
    ``pixel_values``. Rows with ``video`` instead (uint8 (T, H, W, 3), for a model with a video tower and a processor
    with a ``StormVideoProcessor``) give ``pixel_values_videos`` and a ``<video>`` part in the prompt. Only the answer
    and the end-of-sequence token carry labels."""

    def __init__(self, processor, max_length: int = 512):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if self.tokenizer.eos_token_id is None or self.tokenizer.pad_token_id is None:
            raise ValueError("The tokenizer needs an eos and a pad token to build VQA targets.")
        self.max_length = max_length

    def __call__(self, rows: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        media = "video" if "video" in rows[0] else "image"
        prompts = [chat_prompt(self.processor, r["question"], media=media) for r in rows]
        visual = {"videos" if media == "video" else "images": [r[media] for r in rows]}
        enc = self.processor(text=prompts, return_tensors=None, **visual)
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        seqs, labels = [], []
        for prompt_ids, row in zip(enc["input_ids"], rows):
            answer = self.tokenizer(row["answer"], add_special_tokens=False)["input_ids"] + [eos]
            ids = list(prompt_ids) + answer
            if len(ids) > self.max_length:
                raise ValueError(f"A VQA example has {len(ids)} tokens, more than max_length={self.max_length}.")
            seqs.append(ids)
            labels.append([-100] * len(prompt_ids) + answer)
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
        target = torch.full((len(seqs), width), -100, dtype=torch.long)
        for i, (ids, lab) in enumerate(zip(seqs, labels)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            attention_mask[i, : len(ids)] = 1
            target[i, : len(lab)] = torch.tensor(lab)
        pixel_key = "pixel_values_videos" if media == "video" else "pixel_values"
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": target,
                pixel_key: torch.as_tensor(np.asarray(enc[pixel_key]), dtype=torch.float32)}


def freeze_vision_tower(model, freeze: bool = True) -> int:
    """Sets requires_grad of the vision tower's parameters; returns how many parameters it holds."""
    tower = getattr(getattr(model, "model", model), "vision_tower", None) or getattr(model, "vision_tower", None)
    if tower is None:
        return 0
    for p in tower.parameters():
        p.requires_grad_(not freeze)
    return sum(p.numel() for p in tower.parameters())


def train_vlm(model, processor, train_ds, out_dir: Union[str, Path], eval_ds=None, epochs: float = 1.0,
              max_steps: int = -1, lr: float = 1e-3, batch_size: int = 32, lora=None,
              freeze_vision: bool = True, warmup_ratio: float = 0.05, weight_decay: float = 0.0,
              seed: int = 0, logging_steps: int = 20, disable_tqdm: bool = False, **trainer_kwargs) -> RecipeResult:
    """Trains ``model`` on VQA rows (``image``, ``question``, ``answer``) and saves it with its processor to
    ``out_dir``. The vision tower is frozen unless ``freeze_vision=False`` (a tower trained from scratch, as in the
    shapes benchmark, needs it unfrozen); ``lora``: None, an int rank or a
    ``peft.LoraConfig`` (decoder + projector by default). Returns the train metrics (+ VQA exact match on ``eval_ds``
    when given) with ``.model`` (merged) and ``.trainer``."""
    from transformers import Trainer

    torch.manual_seed(seed)
    freeze_vision_tower(model, freeze_vision)
    model = apply_lora(model, lora)
    args = training_arguments(Path(out_dir) / "checkpoints", epochs=epochs, max_steps=max_steps, lr=lr, batch_size=batch_size,
                              eval_strategy="no", save_strategy="no", logging_steps=logging_steps,
                              warmup_ratio=warmup_ratio, weight_decay=weight_decay, seed=seed,
                              remove_unused_columns=False, disable_tqdm=disable_tqdm, **trainer_kwargs)
    trainer = Trainer(model=prepare_for_fsdp(model), args=args, train_dataset=train_ds,
                      data_collator=VqaCollator(processor))
    start = time.perf_counter()
    train_out = trainer.train()
    result = RecipeResult(train_loss=float(train_out.training_loss), train_seconds=time.perf_counter() - start,
                          steps=int(train_out.global_step))
    merged = save_trained(trainer.model, out_dir, processor=processor)
    if eval_ds is not None:
        result.update({f"eval_{k}": v for k, v in evaluate_vqa(merged, processor, eval_ds).items()})
    result.model, result.trainer, result.output_dir = merged, trainer, str(out_dir)
    return result


def load_exact_match_metric():
    import evaluate

    return evaluate.load(str(EXACT_MATCH_METRIC_PATH))


@torch.no_grad()
def answer_questions(model, processor, images: Sequence, questions: Sequence[str], max_new_tokens: int = 6,
                     batch_size: int = 64) -> List[str]:
    """Greedy answers, one per (image, question); left-padded batches; text cut at the end-of-sequence token. For a
    model with a video tower (``config.is_video``) ``images`` are videos (uint8 (T, H, W, 3) arrays)."""
    model.eval()
    media = "video" if getattr(model.config, "is_video", False) else "image"
    tok = processor.tokenizer
    device = next(model.parameters()).device
    side, tok.padding_side = tok.padding_side, "left"
    answers = []
    try:
        for start in range(0, len(questions), batch_size):
            qs, ims = list(questions[start:start + batch_size]), list(images[start:start + batch_size])
            visual = {"videos" if media == "video" else "images": ims}
            enc = processor(text=[chat_prompt(processor, q, media=media) for q in qs], padding=True,
                            return_tensors="pt", **visual).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            answers += [tok.decode(row, skip_special_tokens=True).strip() for row in new]
    finally:
        tok.padding_side = side
    return answers


def _visual_column(model, qa_ds):
    """The QA rows' images (``image``), or videos (``video``) for a model with a video tower."""
    column = "video" if getattr(model.config, "is_video", False) else "image"
    if column not in qa_ds.column_names:
        raise ValueError(f"The QA dataset has no {column!r} column (columns: {qa_ds.column_names}); this model takes "
                         f"{column}s.")
    return qa_ds[column]


def evaluate_vqa(model, processor, qa_ds, batch_size: int = 64, max_new_tokens: int = 6) -> Dict[str, float]:
    """Exact match of greedy answers on a QA dataset (``image`` -- or ``video`` for a video tower --, ``question``,
    ``answer``, optional ``question_type``): ``exact_match`` overall and ``exact_match_<type>`` per type;
    ``num_questions``."""
    preds = answer_questions(model, processor, _visual_column(model, qa_ds), qa_ds["question"], max_new_tokens,
                             batch_size)
    refs = list(qa_ds["answer"])
    metric = load_exact_match_metric()
    result = {"exact_match": metric.compute(predictions=preds, references=refs)["exact_match"],
              "num_questions": len(refs)}
    if "question_type" in qa_ds.column_names:
        groups: Dict[str, List[int]] = defaultdict(list)
        for i, t in enumerate(qa_ds["question_type"]):
            groups[t].append(i)
        for t, idx in sorted(groups.items()):
            result[f"exact_match_{t}"] = metric.compute(predictions=[preds[i] for i in idx],
                                                        references=[refs[i] for i in idx])["exact_match"]
    return result


def examples(model, processor, qa_ds, n: int = 6) -> Iterable[Dict[str, str]]:
    """A few (question, answer, prediction) triples for display."""
    sub = qa_ds.select(range(min(n, len(qa_ds))))
    preds = answer_questions(model, processor, _visual_column(model, sub), sub["question"])
    for q, a, p in zip(sub["question"], sub["answer"], preds):
        yield {"question": q, "answer": a, "prediction": p}


# ---------------------------------------------------------------------------------------------------------------------
# the shapes scenes (training/shapes.py): a tiny VLM and its image processor, used by the main job and benchmarks/
# ---------------------------------------------------------------------------------------------------------------------
def shapes_image_processor(image_size: int):
    """Resize to image_size, RGB, scale to [-1, 1] (PIL backend; no torchvision)."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:  # transformers 5.0
        from transformers import CLIPImageProcessor as Processor
    return Processor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                     do_center_crop=True, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True, resample=2)


def shapes_vlm(tokenizer, decoder: str = "mamba", image_size: int = 48, hidden: int = 96, layers: int = 3,
               vision: str = "siglip", bridger_ffn: bool = False):
    """A tiny VLM for the shapes scenes: ``vision`` "siglip" (a 2-layer SigLIP tower, 16 px patches -> MLP) or
    "patches" (Fuyu mode: raw 16 px patches -> a linear projection, no tower; with ``bridger_ffn`` then VLM-Mamba's
    BridgerFFN) -> ``decoder``."""
    special = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if decoder == "mamba":
        text = dict(model_type="ssmvl_mamba", hidden_size=hidden, num_hidden_layers=layers, state_size=16, **special)
    elif decoder == "llama":
        text = dict(model_type="llama", hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, **special)
    else:
        raise ValueError(f"decoder must be 'mamba' or 'llama', got {decoder!r}")
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    if vision == "patches":
        config = SsmVlmConfig(vision_config=None, text_config=text, projector_type="patch_linear", fusion="prefix",
                              projector_config={"bridger_ffn": bridger_ffn}, image_token_id=image_token_id,
                              image_size=image_size, patch_size=16, num_channels=3)
        return SsmVlmForConditionalGeneration(config)
    if vision != "siglip":
        raise ValueError(f"vision must be 'siglip' or 'patches', got {vision!r}")
    tower = dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=2, image_size=image_size, patch_size=16, vision_use_head=False)
    config = SsmVlmConfig(vision_config=tower, text_config=text, projector_type="mlp", fusion="prefix",
                          image_token_id=image_token_id, vision_feature_layer=-1, vision_feature_select_strategy="full")
    return SsmVlmForConditionalGeneration(config)
