"""The main job (``ssmvl demo``): the four user moves end to end on a CPU, with data that ships with the dependencies.

(i)   language: a tiny Mamba LM trained with Trainer on Python-stdlib docstrings (byte-level BPE tokenizer trained
      on the shipped text), perplexity before / after; then LoRA on the preset SSM projections to adapt it to another
      domain (scikit-learn's dataset descriptions), trainable share printed, merged, text generated, saved.
(ii)  vision: a tiny Vim and a tiny VMamba trained on scikit-learn digits (held-out accuracy), saved with a model card
      stating the measured accuracy; then LoRA on a shifted task (inverted digits) from the trained model, merged,
      re-evaluated.
(iii) vision-language: a tiny VLM (raw patches -> linear -> Mamba LM decoder) instruction-tuned with Trainer on
      generated scenes of coloured shapes (training/shapes.py), then asked colour / shape / position questions about
      held-out scenes: exact match per question type, a few answers printed.
(iv)  Hub: the saved folders are pushed to a local Hub-compatible server (tests/hub_server.py, in-process) and
      loaded back in a fresh subprocess where ssmvl cannot be imported: ``AutoModelForCausalLM.from_pretrained(repo,
      trust_remote_code=True)`` generates, ``pipeline("image-classification", ...)`` predicts.

Every step prints its progress and numbers; a summary goes to ``OUT/summary.json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parent.parent

# Presets are data (configs/): the tiny digits models with their LoRA settings, and the demo's tiny Mamba LM.
_DIGITS_RECIPES = json.loads((REPO_ROOT / "configs" / "digits-recipes.json").read_text())
DIGITS_MODELS: Dict[str, Dict[str, Any]] = {k: v["model"] for k, v in _DIGITS_RECIPES.items() if not k.startswith("_")}
DIGITS_LORA: Dict[str, Dict[str, Any]] = {k.split("-")[0]: v["lora"] for k, v in _DIGITS_RECIPES.items()
                                          if not k.startswith("_")}
LM_MODEL = {k: v for k, v in json.loads((REPO_ROOT / "configs" / "mamba-lm-demo.json").read_text()).items()
            if not k.startswith("_")}
LM_PROMPT = "The dataset"

_T0 = time.time()


def say(msg: str):
    print(f"[ssmvl demo {time.time() - _T0:6.1f}s] {msg}", flush=True)


def banner(title: str):
    print("\n" + "=" * 100 + f"\n{title}\n" + "=" * 100, flush=True)


# ---------------------------------------------------------------------------------------------------------------------
# (i) language model
# ---------------------------------------------------------------------------------------------------------------------
def lm_step(out_dir, steps: int = 240, lr: float = 3e-3, batch_size: int = 8, block_size: int = 128,
            vocab_size: int = 1024, model: Optional[str] = None, lora_only: bool = False, lora_r: int = 4,
            lora_steps: int = 80, lora_lr: float = 5e-3, save_steps: int = 100, resume=None,
            prompt: str = LM_PROMPT, progress: bool = True, bf16: bool = False) -> Dict[str, Any]:
    """Trains the base LM on stdlib docstrings (``OUT/mamba-lm``) and a LoRA adaptation to the scikit-learn dataset
    descriptions (``OUT/mamba-lm-sklearn-lora``: merged model + ``adapter/``). ``model``: a config JSON or a model
    folder to start from (default: the tiny ``LM_MODEL``); ``lora_only``: skip the base training (``model`` must be a
    trained folder); ``bf16``: bfloat16 mixed precision for both trainings (``training_arguments``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import ssmvl.modeling  # noqa: F401
    from ssmvl.modeling import MambaLMConfig

    from .data import build_lm_dataset, shipped_text_documents, train_bpe_tokenizer
    from .lora import adapted_module_names, count_parameters, lora_config_for
    from .recipes import apply_lora, evaluate_perplexity, generate_text, save_trained, train_causal_lm

    out_dir = Path(out_dir)
    result: Dict[str, Any] = {}
    base_dir, lora_dir = out_dir / "mamba-lm", out_dir / "mamba-lm-sklearn-lora"
    work = out_dir / "_work"
    stdlib_docs = shipped_text_documents(max_chars=800_000, sources=("stdlib",))
    sklearn_docs = shipped_text_documents(max_chars=None, sources=("sklearn",))

    if model is not None and Path(model).is_dir():
        tokenizer = AutoTokenizer.from_pretrained(model)
        say(f"tokenizer loaded from {model} (vocab {len(tokenizer)})")
    else:
        tokenizer = train_bpe_tokenizer(stdlib_docs + sklearn_docs, vocab_size=vocab_size)
        say(f"byte-level BPE tokenizer trained on the shipped text: vocab {len(tokenizer)}")
    base_data = build_lm_dataset(tokenizer, stdlib_docs, block_size=block_size, eval_fraction=0.05)
    lora_data = build_lm_dataset(tokenizer, sklearn_docs, block_size=block_size, eval_fraction=0.1)
    say(f"stdlib docstrings: {sum(map(len, stdlib_docs)):,} chars -> {len(base_data['train'])} train / "
        f"{len(base_data['test'])} eval blocks of {block_size} tokens; scikit-learn descriptions: "
        f"{sum(map(len, sklearn_docs)):,} chars -> {len(lora_data['train'])} / {len(lora_data['test'])} blocks")
    extra = {} if progress else {"disable_tqdm": True}
    if bf16:
        extra["bf16"] = True

    if lora_only:
        if model is None:
            raise ValueError("lora_only needs model=<trained model folder>")
        base_model = AutoModelForCausalLM.from_pretrained(model, trust_remote_code=True)
    else:
        if model is None:
            config = MambaLMConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   **LM_MODEL)
        elif Path(model).is_file():
            config = MambaLMConfig.from_json_file(model)
            config.vocab_size = len(tokenizer)
        else:
            config = model
        say(f"training the Mamba LM ({steps} steps, batch {batch_size} x {block_size} tokens) with Trainer")
        metrics = train_causal_lm(config, base_data["train"], base_data["test"], base_dir, tokenizer=tokenizer,
                                  max_steps=steps, lr=lr, batch_size=batch_size, save_steps=save_steps,
                                  checkpoint_dir=work / "mamba-lm-checkpoints", resume_from_checkpoint=resume,
                                  logging_steps=20, **extra)
        base_model = metrics.model
        result.update(lm_params=metrics["total_params"], lm_perplexity_before=metrics["perplexity_before"],
                      lm_perplexity_after=metrics["perplexity"], lm_train_seconds=metrics["train_seconds"],
                      lm_dir=str(base_dir))
        say(f"Mamba LM ({metrics['total_params']:,} params): held-out perplexity {metrics['perplexity_before']:.1f} "
            f"before -> {metrics['perplexity']:.1f} after training ({metrics['train_seconds']:.0f}s); "
            f"saved to {base_dir}")
        if not metrics["perplexity"] < metrics["perplexity_before"]:
            raise RuntimeError("the LM loss did not go down")
        _write_model_card(
            base_dir, repo_id="ssmvl-demo/mamba-lm", title="ssmvl tiny Mamba LM (Python docstrings)", family="mamba",
            license="apache-2.0", pipeline_tag="text-generation", datasets=["Python standard library docstrings"],
            metrics={"perplexity": metrics["perplexity"], "perplexity_before_training": metrics["perplexity_before"]},
            metrics_dataset="held-out 5% of the docstring blocks", metrics_split="test",
            description=(f"A tiny Mamba language model trained with `ssmvl demo` ({steps} Trainer steps on CPU) on the "
                         f"docstrings of the Python standard library, with a {len(tokenizer)}-token byte-level BPE "
                         f"tokenizer trained on the same text. Held-out perplexity {metrics['perplexity']:.1f} "
                         f"(untrained: {metrics['perplexity_before']:.1f}). A toy: it shows the pipeline, not a "
                         f"useful language model."),
        )
        result["lm_sample"] = generate_text(base_model, tokenizer, prompt, max_new_tokens=40)
        say(f"sample from the base LM: {result['lm_sample']!r}")

    # LoRA: adapt to the scikit-learn dataset descriptions
    ppl_domain_before = evaluate_perplexity(base_model, lora_data["test"])
    lora_config = lora_config_for(base_model, r=lora_r, alpha=2 * lora_r)
    peft_model = apply_lora(base_model, lora_config)
    params = count_parameters(peft_model)
    adapted = adapted_module_names(peft_model)
    kinds = sorted({n.rsplit(".", 1)[-1] for n in adapted})
    say(f"LoRA r={lora_r} on {kinds} ({len(adapted)} modules): trainable {params['trainable_params']:,} of "
        f"{params['total_params']:,} parameters = {params['trainable_percent']:.2f}%")
    metrics = train_causal_lm(peft_model, lora_data["train"], lora_data["test"], lora_dir, tokenizer=tokenizer,
                              max_steps=lora_steps, lr=lora_lr, batch_size=batch_size, save=False,
                              checkpoint_dir=work / "mamba-lm-lora-checkpoints", evaluate_before=False,
                              logging_steps=20, **extra)
    peft_model = metrics.trainer.model
    peft_model.eval()
    probe = torch.as_tensor(lora_data["test"][:2]["input_ids"])
    with torch.no_grad():
        adapted_logits = peft_model(input_ids=probe).logits
    merged = save_trained(peft_model, lora_dir, processor=tokenizer)
    with torch.no_grad():
        merge_diff = float((merged(input_ids=probe).logits - adapted_logits).abs().max())
    ppl_domain_after = evaluate_perplexity(merged, lora_data["test"])
    text = generate_text(merged, tokenizer, prompt, max_new_tokens=40)
    result.update(lora_trainable_percent=params["trainable_percent"], lora_trainable_params=params["trainable_params"],
                  lora_targets=kinds, lora_domain_perplexity_before=ppl_domain_before,
                  lora_domain_perplexity_after=ppl_domain_after, lora_merge_max_abs_diff=merge_diff,
                  lora_sample=text, lora_dir=str(lora_dir), prompt=prompt)
    _write_model_card(
        lora_dir, repo_id=f"ssmvl-demo/{lora_dir.name}", title="ssmvl tiny Mamba LM + LoRA (scikit-learn descriptions)",
        family="mamba", license="apache-2.0", pipeline_tag="text-generation", base_model="ssmvl-demo/mamba-lm",
        datasets=["scikit-learn dataset descriptions"],
        metrics={"perplexity": ppl_domain_after, "perplexity_before_lora": ppl_domain_before,
                 "trainable_percent": params["trainable_percent"]},
        metrics_dataset="held-out 10% of the scikit-learn description blocks", metrics_split="test",
        description=(f"The demo's tiny Mamba LM adapted with LoRA (r={lora_r} on {kinds}, "
                     f"{params['trainable_percent']:.2f}% of the parameters trained) to scikit-learn's dataset "
                     f"descriptions, then merged. Perplexity on held-out descriptions: {ppl_domain_before:.1f} -> "
                     f"{ppl_domain_after:.1f}. The adapter alone is in `adapter/`."),
    )
    say(f"LoRA: scikit-learn-descriptions perplexity {ppl_domain_before:.1f} -> {ppl_domain_after:.1f}; "
        f"merge_and_unload max |logit diff| {merge_diff:.2e}; merged model + tokenizer saved to {lora_dir} "
        f"(adapter alone in {lora_dir / 'adapter'})")
    say(f"generated from the merged LoRA model, prompt {prompt!r}:\n    {text!r}")
    return result


# ---------------------------------------------------------------------------------------------------------------------
# (ii) vision
# ---------------------------------------------------------------------------------------------------------------------
def vlm_step(out_dir: Path, steps: int = 3600, scenes: int = 3000, test_scenes: int = 100, lr: float = 1e-3,
             batch_size: int = 32, progress: bool = True) -> Dict[str, Any]:
    """A tiny Mamba-decoder VLM (VLM-Mamba's Fuyu mode: raw 16 px patches -> linear -> Mamba LM, no vision tower)
    instruction-tuned on generated shapes scenes (colour / shape / position questions), then asked about held-out
    scenes it has never seen."""
    from ..modeling.processing_ssm_vlm import SsmVlmProcessor
    from .shapes import build_shapes_tokenizer, make_shapes_qa_dataset
    from .vlm import ATTRIBUTES, evaluate_vqa, examples, shapes_image_processor, shapes_vlm, train_vlm

    import torch

    torch.manual_seed(0)  # the model's init does not depend on what ran before (benchmarks/train_vlm_shapes.py does so)
    tok = build_shapes_tokenizer()
    train = make_shapes_qa_dataset(scenes, seed=0, image_size=48, split="train", question_types=ATTRIBUTES)
    test = make_shapes_qa_dataset(test_scenes, seed=1, image_size=48, split="test", question_types=ATTRIBUTES)
    model = shapes_vlm(tok, "mamba", vision="patches")  # raw patches learn fastest on 2 CPU cores (benchmarks/README)
    processor = SsmVlmProcessor.from_config(model.config, shapes_image_processor(48), tok)
    say(f"VLM: {sum(p.numel() for p in model.parameters())} parameters, {len(train)} training questions about "
        f"{scenes} scenes; {len(test)} questions about {test_scenes} held-out scenes")
    vlm_dir = out_dir / "vlm-shapes"
    result = train_vlm(model, processor, train, vlm_dir, max_steps=steps, lr=lr, batch_size=batch_size,
                       freeze_vision=False, disable_tqdm=not progress, logging_steps=100)
    scores = evaluate_vqa(result.model, processor, test)
    say(f"held-out exact match {scores['exact_match']:.3f} (colour {scores.get('exact_match_color', 0):.3f}, shape "
        f"{scores.get('exact_match_shape', 0):.3f}, position {scores.get('exact_match_position', 0):.3f})")
    for row in examples(result.model, processor, test.shuffle(seed=3), n=6):
        say(f"  Q: {row['question']:<40} A: {row['prediction']:<14} (truth: {row['answer']})")
    return {"vlm_params": sum(p.numel() for p in result.model.parameters()),
            "vlm_train_seconds": result["train_seconds"], "vlm_steps": result["steps"],
            "vlm_exact_match": scores["exact_match"],
            **{f"vlm_{k}": v for k, v in scores.items() if k.startswith("exact_match_")}, "vlm_dir": str(vlm_dir)}


def video_step(out_dir: Path, steps: int = 300, clips: int = 4000, test_clips: int = 400, lr: float = 3e-3,
               batch_size: int = 32, progress: bool = True) -> Dict[str, Any]:
    """A small STORM video classifier (per-frame and temporal Mamba layers, a STORM block) learns the motion direction
    of generated moving shapes (training/moving_shapes.py), then names the direction in held-out clips it has never
    seen (benchmarks/README.md: 1.000 held-out after 300 steps)."""
    from .moving_shapes import make_moving_shapes_dataset
    from .video import evaluate_video_classifier, storm_video_classifier, train_video_classifier, video_processor_for

    import torch

    torch.manual_seed(0)
    train = make_moving_shapes_dataset(clips, seed=0, split="train", num_frames=16, image_size=32)
    test = make_moving_shapes_dataset(test_clips, seed=1, split="test", num_frames=16, image_size=32)
    model = storm_video_classifier(num_frames=8, image_size=32, labels=train)
    processor = video_processor_for(model.config)
    say(f"STORM video classifier: {sum(p.numel() for p in model.parameters())} parameters; {len(train)} training "
        f"clips, {len(test)} held-out clips of 16 frames (8 sampled), 32 px")
    video_dir = out_dir / "storm-video"
    result = train_video_classifier(model, processor, train, video_dir, max_steps=steps, lr=lr,
                                    batch_size=batch_size, disable_tqdm=not progress, logging_steps=50,
                                    save_strategy="no")
    scores = evaluate_video_classifier(result.model, processor, test)
    say(f"held-out direction accuracy {scores['accuracy']:.3f}; {scores['tokens_to_head']} tokens reach the head "
        f"(frames x patches: {scores['frames_x_patches']})")
    names = result.model.config.id2label
    sample = test.shuffle(seed=3).select(range(min(6, len(test))))
    with torch.no_grad():
        logits = result.model(**processor([row["video"] for row in sample], return_tensors="pt")).logits
    for row, pred in zip(sample, logits.argmax(-1).tolist()):
        say(f"  clip: {row['caption']:<45} predicted: {names[pred]}")
    return {"video_params": sum(p.numel() for p in result.model.parameters()),
            "video_train_seconds": result["train_seconds"], "video_steps": result["global_step"],
            "video_accuracy": scores["accuracy"], "video_tokens_to_head": scores["tokens_to_head"],
            "video_dir": str(video_dir)}


def _write_model_card(model_dir: Path, **metadata) -> str:
    """README.md from ``ssmvl.conversion.model_card.render_model_card(model_dir, **metadata)`` (keys: title,
    description, family, datasets, metrics, metrics_dataset, metrics_split, base_model, notes, ...); if rendering
    fails, a minimal card with the same numbers."""
    from ..conversion.model_card import render_model_card

    text = None
    try:
        text = render_model_card(str(model_dir), **metadata)
    except Exception as exc:  # keep the demo going; the fallback card still states the numbers
        say(f"render_model_card failed ({type(exc).__name__}: {exc}); writing a minimal card")
    if not text:
        lines = ["---", "library_name: transformers", f"pipeline_tag: {metadata.get('pipeline_tag', '')}",
                 "license: apache-2.0", "tags:", "- ssmvl", "- state-space-model", "- custom_code", "---", "",
                 f"# {metadata.get('title', model_dir.name)}", "", metadata.get("description", ""), "", "## Results",
                 ""]
        lines += [f"- {k} ({metadata.get('metrics_dataset', '')}): {v:.4f}" if isinstance(v, float)
                  else f"- {k}: {v}" for k, v in metadata.get("metrics", {}).items()]
        text = "\n".join(lines) + "\n"
    from .distributed import is_main_process

    if is_main_process():  # under torchrun / accelerate launch every process gets here; one writes
        (model_dir / "README.md").write_text(text, encoding="utf-8")
    return text


def _targets_text(targets) -> str:
    """LoRA targets for printing: a regex (VMamba) as it is, a list / set sorted."""
    return targets if isinstance(targets, str) else str(sorted(targets))


def vision_step(out_dir, family: str = "vim", epochs: float = 12, lr: float = 3e-3, batch_size: int = 64,
                lora_shift: Optional[str] = "invert", lora_epochs: Optional[float] = None, lora_lr: float = 1e-2,
                lora_r: Optional[int] = None, image_size: int = 32, progress: bool = True,
                seed: int = 0) -> Dict[str, Any]:
    """Trains ``{family}-digits`` on scikit-learn digits, evaluates held-out accuracy, saves to
    ``OUT/{family}-digits`` with a model card; then (``lora_shift``) LoRA on the shifted digits from the trained model,
    saved merged to ``OUT/{family}-digits-{shift}-lora`` (adapter in ``adapter/``). Returns the numbers."""
    import ssmvl.modeling  # noqa: F401
    from transformers import AutoConfig

    from .data import build_digits_dataset, make_digits_processor
    from .lora import lora_config_for
    from .recipes import evaluate_image_classifier, train_image_classifier

    name = f"{family}-digits"
    lora_r = lora_r if lora_r is not None else DIGITS_LORA.get(family, {}).get("lora_r", 4)
    lora_epochs = lora_epochs if lora_epochs is not None else DIGITS_LORA.get(family, {}).get("lora_epochs", 8)
    spec = dict(DIGITS_MODELS[name])
    spec["image_size"] = image_size
    config = AutoConfig.for_model(spec.pop("model_type"), num_labels=10, **spec)
    out_dir = Path(out_dir)
    work = out_dir / "_work"
    processor = make_digits_processor(image_size)
    data = build_digits_dataset(image_size, image_processor=processor, seed=seed)
    extra = {} if progress else {"disable_tqdm": True}
    say(f"{name}: digits {len(data['train'])} train / {len(data['test'])} test (stratified, seed {seed}), "
        f"{image_size}px RGB; training {epochs:g} epochs with Trainer")
    base_dir = out_dir / name
    m = train_image_classifier(config, data["train"], data["test"], base_dir, epochs=epochs, lr=lr,
                               batch_size=batch_size, image_processor=processor, checkpoint_dir=work / name,
                               seed=seed, **extra)
    model = m.model
    res: Dict[str, Any] = {f"{family}_params": m["total_params"], f"{family}_accuracy": m["eval_accuracy"],
                           f"{family}_train_seconds": m["train_seconds"], f"{family}_dir": str(base_dir)}
    say(f"{name} ({m['total_params']:,} params): held-out accuracy {m['eval_accuracy']:.4f} "
        f"({m['train_seconds']:.0f}s); saved to {base_dir}")
    _write_model_card(
        base_dir, repo_id=f"ssmvl-demo/{name}", title=f"ssmvl {name}", family=family, license="apache-2.0",
        pipeline_tag="image-classification", datasets=["scikit-learn digits"],
        metrics={"accuracy": m["eval_accuracy"]}, metrics_dataset="scikit-learn digits (held-out 20%, stratified)",
        metrics_split="test",
        description=(f"A tiny {family} trained from scratch with `ssmvl demo` on the scikit-learn digits (1797 real "
                     f"8x8 handwritten digits, upsampled to {image_size}px RGB), fixed stratified 80/20 split "
                     f"(seed {seed}), {epochs:g} epochs on CPU. Measured held-out accuracy: "
                     f"**{m['eval_accuracy']:.4f}** on {len(data['test'])} test images."),
    )
    if not lora_shift:
        return res

    shifted = build_digits_dataset(image_size, shift=lora_shift, image_processor=processor, seed=seed)
    before = evaluate_image_classifier(model, shifted["test"])["accuracy"]
    lora_config = lora_config_for(model, r=lora_r, alpha=2 * lora_r)
    lora_dir = out_dir / f"{name}-{lora_shift}-lora"
    say(f"{name}: shifted task '{lora_shift}' digits, the trained model gets {before:.4f}; LoRA r={lora_r} on "
        f"{_targets_text(lora_config.target_modules)} + head, {lora_epochs:g} epochs")
    lm = train_image_classifier(model, shifted["train"], shifted["test"], lora_dir, epochs=lora_epochs, lr=lora_lr,
                                batch_size=batch_size, lora=lora_config, image_processor=processor,
                                checkpoint_dir=work / f"{name}-lora", seed=seed, warmup_ratio=0.0, weight_decay=0.0,
                                **extra)
    res.update({f"{family}_{lora_shift}_before_lora": before,
                f"{family}_lora_accuracy": lm["eval_accuracy"],
                f"{family}_lora_merged_accuracy": lm["merged_eval_accuracy"],
                f"{family}_lora_trainable_percent": lm["trainable_percent"],
                f"{family}_lora_dir": str(lora_dir)})
    say(f"{name} LoRA on '{lora_shift}' digits: accuracy {before:.4f} -> {lm['eval_accuracy']:.4f} "
        f"(merged: {lm['merged_eval_accuracy']:.4f}), trainable {lm['trainable_params']:,} of {lm['total_params']:,} "
        f"= {lm['trainable_percent']:.2f}%")
    _write_model_card(
        lora_dir, repo_id=f"ssmvl-demo/{lora_dir.name}", title=f"ssmvl {name} + LoRA ({lora_shift} digits)",
        family=family, license="apache-2.0", pipeline_tag="image-classification", base_model=f"ssmvl-demo/{name}",
        datasets=[f"scikit-learn digits ({lora_shift})"],
        metrics={"accuracy": lm["merged_eval_accuracy"], "accuracy_before_lora": before,
                 "trainable_percent": lm["trainable_percent"]},
        metrics_dataset=f"scikit-learn digits, {lora_shift} (held-out 20%)", metrics_split="test",
        description=(f"`{name}` adapted with LoRA (r={lora_r}, targets {_targets_text(lora_config.target_modules)}, head "
                     f"trained fully; {lm['trainable_percent']:.2f}% of the parameters trained) to {lora_shift} digits,"
                     f" then merged (`merge_and_unload`). Measured accuracy on the {lora_shift} test split: "
                     f"**{lm['merged_eval_accuracy']:.4f}** (the base model before LoRA: {before:.4f}). The adapter "
                     f"alone is in `adapter/` (load it with `peft.PeftModel.from_pretrained(base, ...)`)."),
    )
    return res


# ---------------------------------------------------------------------------------------------------------------------
# (iii) Hub push + reload without ssmvl
# ---------------------------------------------------------------------------------------------------------------------
def _import_by_path(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, str(path))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def start_local_hub():
    """Starts tests/hub_server.py's ``HubServer`` in-process (imported by path). Returns (endpoint, stop), or None
    when it is not available."""
    path = REPO_ROOT / "tests" / "hub_server.py"
    if not path.is_file():
        say(f"no local Hub server ({path} missing): skipping the push, reloading from the saved folders instead")
        return None
    try:
        server = _import_by_path("_ssmvl_hub_server", path).HubServer().start()
    except Exception as exc:
        say(f"could not start the local Hub server from {path} ({type(exc).__name__}: {exc}); skipping the push")
        return None
    return server.url, server.stop


def push_to_hub(local_dir: Path, repo_id: str, endpoint: str, token: str = "hf_local_demo_token") -> str:
    """ssmvl.conversion.hub.push_folder when available (and it takes an endpoint), else huggingface_hub directly."""
    import inspect

    import huggingface_hub

    os.environ["HF_ENDPOINT"] = endpoint
    huggingface_hub.constants.ENDPOINT = endpoint  # the client read HF_ENDPOINT at import time
    try:
        from ssmvl.conversion.hub import push_folder
    except ImportError:
        push_folder = None
    if push_folder is not None:
        params = inspect.signature(push_folder).parameters
        if "endpoint" in params:
            kwargs = {"endpoint": endpoint}
            if "token" in params:
                kwargs["token"] = token
            return str(push_folder(str(local_dir), repo_id, **kwargs))
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=str(local_dir), repo_id=repo_id, ignore_patterns=["checkpoints/*", "_work/*"])
    return f"{endpoint}/{repo_id}"


_ISOLATION = textwrap.dedent("""
    import importlib.abc as _abc, os as _os, sys as _sys
    _repo = {repo!r}
    _sys.path[:] = [p for p in _sys.path if p and _os.path.abspath(p) != _repo]
    _sys.meta_path[:] = [f for f in _sys.meta_path if "editable" not in (type(f).__name__ + str(getattr(f, "__module__", "")))]
    class _NoSsmvl(_abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "ssmvl" or name.startswith("ssmvl."):
                raise ModuleNotFoundError("ssmvl is hidden in this process", name=name)
    _sys.meta_path.insert(0, _NoSsmvl())
    try:
        import ssmvl
        raise SystemExit("ssmvl was importable")
    except ModuleNotFoundError:
        print("[fresh process] ssmvl is not importable here; loading with transformers + trust_remote_code only")
""")


def reload_without_ssmvl(lm_ref: Optional[str], image_refs: Sequence[str], prompt: str, workdir: Path,
                         env_extra: Optional[Dict[str, str]] = None, n_images: int = 8, shift_refs=()) -> str:
    """Runs a fresh Python process where ssmvl cannot be imported; loads the LM (generate) and the image classifiers
    (pipeline) from ``*_ref`` (Hub repo ids with HF_ENDPOINT set, or local folders). Returns its stdout."""
    from .data import digits_split_indices, digits_to_pil, shift_digits

    workdir.mkdir(parents=True, exist_ok=True)
    from sklearn.datasets import load_digits

    digits = load_digits()
    _, test_idx = digits_split_indices()
    picks = test_idx[:n_images]
    sets = {"plain": shift_digits(digits.images.astype(float), None)}
    for _, shift in shift_refs:
        sets[shift] = shift_digits(digits.images.astype(float), shift)
    files = {}
    for key, images in sets.items():
        files[key] = []
        for i in picks:
            path = workdir / f"digit_{key}_{i}_label{digits.target[i]}.png"
            digits_to_pil(images[i], 32).save(path)
            files[key].append(str(path.resolve()))  # the fresh process runs in another folder
    code = _ISOLATION.format(repo=str(REPO_ROOT)) + textwrap.dedent(f"""
        import torch, transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
        torch.manual_seed(0)
        lm_ref, image_refs, shift_refs, files = {lm_ref!r}, {list(image_refs)!r}, {list(shift_refs)!r}, {files!r}
        if lm_ref:
            tok = AutoTokenizer.from_pretrained(lm_ref, trust_remote_code=True)
            model = AutoModelForCausalLM.from_pretrained(lm_ref, trust_remote_code=True).eval()
            print(f"[fresh process] {{lm_ref}} -> {{type(model).__module__}}.{{type(model).__name__}}")
            ids = tok({prompt!r}, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=40, do_sample=True, top_k=40, temperature=0.8,
                                 pad_token_id=tok.pad_token_id)
            print("[fresh process] generated:", repr(tok.decode(out[0], skip_special_tokens=True)))
        def classify(ref, key):
            clf = pipeline("image-classification", model=ref, trust_remote_code=True)
            preds = [clf(f, top_k=1)[0]["label"] for f in files[key]]
            truth = [f.rsplit("label", 1)[1].split(".")[0] for f in files[key]]
            ok = sum(p == t for p, t in zip(preds, truth))
            print(f"[fresh process] pipeline('image-classification', {{ref}}) on {{key}} digits: predicted {{preds}} "
                  f"true {{truth}} ({{ok}}/{{len(truth)}})")
        for ref in image_refs:
            classify(ref, "plain")
        for ref, key in shift_refs:
            classify(ref, key)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", TRANSFORMERS_VERBOSITY="error", HF_HOME=str(workdir / "hf_home"),
               PYTHONDONTWRITEBYTECODE="1", TOKENIZERS_PARALLELISM="false")
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(workdir), env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"reload without ssmvl failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-5000:]}")
    return out


def hub_step(out_dir: Path, summary: Dict[str, Any]) -> Dict[str, Any]:
    lm_dir = summary.get("lora_dir") or summary.get("lm_dir")
    image_dirs = [summary[k] for k in ("vim_dir", "vmamba_dir") if k in summary]
    shift_dirs = [(summary[k], summary.get("shift", "invert")) for k in ("vim_lora_dir", "vmamba_lora_dir")
                  if k in summary]
    res: Dict[str, Any] = {}
    started = start_local_hub()
    env_extra = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
    if started is not None and started[0]:
        endpoint, stop = started
        say(f"local Hub endpoint {endpoint}")
        import huggingface_hub

        saved_endpoint = (os.environ.get("HF_ENDPOINT"), huggingface_hub.constants.ENDPOINT)
        try:
            refs = {}
            for d in [summary.get("lm_dir"), lm_dir] + image_dirs + [d for d, _ in shift_dirs]:
                if not d or d in refs:
                    continue
                repo_id = f"ssmvl-demo/{Path(d).name}"
                url = push_to_hub(Path(d), repo_id, endpoint)
                refs[d] = repo_id
                say(f"pushed {d} -> {repo_id} ({url})")
            env_extra.update(HF_ENDPOINT=endpoint, HF_TOKEN="hf_local_demo_token")
            say("reloading from the local Hub in a fresh process without ssmvl")
            out = reload_without_ssmvl(refs.get(lm_dir), [refs[d] for d in image_dirs], summary.get("prompt", LM_PROMPT),
                                       out_dir / "_work" / "reload", env_extra=env_extra,
                                       shift_refs=[(refs[d], s) for d, s in shift_dirs])
            res["hub"] = endpoint
        finally:
            try:
                stop()
            except Exception:
                pass
            if saved_endpoint[0] is None:
                os.environ.pop("HF_ENDPOINT", None)
            else:
                os.environ["HF_ENDPOINT"] = saved_endpoint[0]
            huggingface_hub.constants.ENDPOINT = saved_endpoint[1]
    else:
        env_extra.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        say("reloading the saved folders in a fresh process without ssmvl")
        out = reload_without_ssmvl(lm_dir, image_dirs, summary.get("prompt", LM_PROMPT), out_dir / "_work" / "reload",
                                   env_extra=env_extra, shift_refs=shift_dirs)
        res["hub"] = None
    print(textwrap.indent(out.rstrip(), "    "), flush=True)
    res["reload_output"] = out
    sample = summary.get("lora_sample") if summary.get("lora_dir") else summary.get("lm_sample")
    if sample:
        res["reload_generation_matches"] = repr(sample) in out
        say(f"text generated in the fresh process (same seed) equals the in-process text: "
            f"{res['reload_generation_matches']}")
    return res


# ---------------------------------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------------------------------
def run_demo(out_dir="outputs/demo", quick: bool = False, families: Sequence[str] = ("vim", "vmamba"),
             shift: str = "invert", threads: Optional[int] = None) -> Dict[str, Any]:
    """The main job; ``quick``: a smoke run with few steps (numbers are then not meaningful). ``threads``: torch CPU
    threads (default: the idle cores, see ``recipes.configure_cpu_threads``)."""
    global _T0
    _T0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from .recipes import configure_cpu_threads

    threads = configure_cpu_threads(threads)
    say(f"torch {torch.__version__}, {'CUDA' if torch.cuda.is_available() else 'CPU'}, {threads} thread(s)")
    summary: Dict[str, Any] = {"quick": quick, "torch_threads": torch.get_num_threads(), "shift": shift}

    banner("(i) Mamba language model: Trainer on shipped text, then LoRA on the SSM projections")
    summary.update(lm_step(out_dir, steps=40 if quick else 240, lora_steps=15 if quick else 80,
                           progress=not quick))

    banner("(ii) vision: Vim / VMamba on scikit-learn digits, then LoRA on a shifted task")
    for family in families:
        try:
            import_name = {"vim": "modeling_vim", "vmamba": "modeling_vmamba"}[family]
            importlib.import_module(f"ssmvl.modeling.{import_name}")
        except ImportError as exc:
            say(f"skipping {family}: ssmvl.modeling.{import_name} is not importable ({exc})")
            continue
        summary.update(vision_step(out_dir, family, epochs=2 if quick else 12, lora_shift=shift,
                                   lora_epochs=2 if quick else None, progress=not quick))

    banner("(iii) vision-language: a Mamba-decoder VLM answers questions about generated scenes")
    summary.update(vlm_step(out_dir, steps=30 if quick else 3600, scenes=200 if quick else 3000,
                            test_scenes=20 if quick else 100, progress=not quick))

    banner("(iv) video: a STORM classifier learns which way generated shapes move")
    summary.update(video_step(out_dir, steps=10 if quick else 300, clips=64 if quick else 4000,
                              test_clips=16 if quick else 400, progress=not quick))

    banner("(v) Hub: push, then load back with transformers alone (no ssmvl) in a fresh process")
    summary.update(hub_step(out_dir, summary))

    summary["wall_seconds"] = time.time() - _T0
    banner("summary")
    for key, value in summary.items():
        if key in ("reload_output",):
            continue
        print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    shutil.rmtree(out_dir / "_work", ignore_errors=True)
    say(f"done in {summary['wall_seconds']:.0f}s; outputs in {out_dir}")
    return summary


__all__ = ["DIGITS_MODELS", "DIGITS_LORA", "LM_MODEL", "lm_step", "vision_step", "vlm_step", "video_step", "hub_step",
           "run_demo", "reload_without_ssmvl"]
