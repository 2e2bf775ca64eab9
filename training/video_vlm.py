"""Video question answering with the combined pipeline (issue 11): a STORM video tower inside the VLM family, its
tokens reduced in time (temporal pooling) and space (learned top-k retention) before a Mamba LM decoder, trained in two
stages on the generated moving shapes clips (``training/moving_shapes.py``).

    video (T, H, W, 3) -> StormVideoProcessor (num_frames sampled) -> STORM: per-frame Mamba, Mamba over all frames,
    temporal pooling, retention (+ memory) -> video tokens -> MLP projector -> at the "<video>" placeholder -> Mamba LM

* Stage 1, alignment (``align_video_tower``): the STORM tower is the vision side of the SigLIP-style dual encoder
  (``SigLipDualEncoderModel``, sigmoid loss ``SigLipLoss``) with a small Mamba LM text tower, trained on (clip,
  caption) pairs with ``train_dual_encoder``: the tower learns what the captions say (colour, shape, direction, speed,
  events, how many objects). Measured by held-out video -> caption retrieval (``evaluate_retrieval``, one clip per
  distinct caption).
* Stage 2, question answering (``train_video_qa``): ``storm_video_vlm`` builds the VLM around the stage-1 tower
  (weights copied strictly); ``train_vlm`` tunes the decoder with LoRA (its SSM projections, ``video_qa_lora_config``)
  and the projector in full (PEFT ``modules_to_save``), the tower frozen by default; ``evaluate_vqa`` gives greedy exact
  match on held-out clips, overall and per question type.
* ``train_video_qa_pipeline``: both stages end to end (what ``benchmarks/train_video_qa.py`` and ``ssmvl
  train-video-qa`` run); the saved folders load with ``AutoModel`` (stage 1) / ``AutoModelForCausalLM`` +
  ``AutoProcessor`` (stage 2) and ``trust_remote_code=True`` without ssmvl.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

from .lora import count_parameters
from .recipes import RecipeResult

STAGE1_SUBDIR = "stage1-alignment"  # the stage-1 dual encoder inside the pipeline's output folder
CAPTION_QUESTION = "what is there?"  # stage 2's caption rows: this question, the clip's caption as the answer


# ---------------------------------------------------------------------------------------------------------------------
# models and processors
# ---------------------------------------------------------------------------------------------------------------------
def storm_video_tower_config(num_frames: int = 4, image_size: int = 32, patch_size: int = 8, hidden: int = 64,
                             layers: int = 1, keep_ratio: float = 1.0, temporal_pool: int = 4, frame_layers: int = 1,
                             temporal_layers: int = 1, num_memory_tokens: int = 4, state_size: int = 8,
                             conv_kernel: Optional[int] = None, **config_kwargs):
    """A small ``StormConfig`` for the moving shapes clips: ``num_frames`` frames of ``image_size`` px cut into
    ``patch_size`` px patches; ``frame_layers`` Mamba blocks per frame and ``temporal_layers`` over all frames, then
    temporal pooling of ``temporal_pool`` frames and ``layers`` STORM blocks whose first keeps ``keep_ratio`` of the
    tokens. ``conv_kernel`` defaults to a frame of tokens plus one (as ``video.storm_video_classifier``: the temporal
    conv then reaches the same patch of the previous frame). Defaults: 4 frames x 16 patches = 64 tokens -> the 4 frames
    pooled into one after the temporal layer -> 16 tokens per clip; no retention (``keep_ratio`` 1.0): at this size an
    untrained top-k scorer drops object tokens (benchmarks/README.md, video QA)."""
    from ..modeling.configuration_storm import StormConfig

    if conv_kernel is None:
        conv_kernel = (image_size // patch_size) ** 2 + 1
    return StormConfig(
        image_size=image_size, patch_size=patch_size, hidden_size=hidden, num_hidden_layers=layers,
        keep_ratios=[keep_ratio] + [1.0] * (layers - 1), num_memory_tokens=num_memory_tokens, state_size=state_size,
        conv_kernel=conv_kernel, frame_layers=frame_layers, temporal_layers=temporal_layers, num_frames=num_frames,
        temporal_pool=temporal_pool, **config_kwargs)


def video_caption_dual_encoder(tokenizer, tower_config, text_hidden: int = 64, text_layers: int = 2,
                               projection_dim: int = 64, **config_kwargs):
    """Stage 1's model: a ``SigLipDualEncoderModel`` with ``tower_config`` (STORM) as its vision side and a small Mamba
    LM text tower over ``tokenizer``'s vocabulary (pooled at the last real token), sigmoid loss."""
    from ..modeling.configuration_dual_encoder import SigLipDualEncoderConfig
    from ..modeling.modeling_dual_encoder import SigLipDualEncoderModel

    text = dict(model_type="ssmvl_mamba", vocab_size=len(tokenizer), hidden_size=text_hidden,
                num_hidden_layers=text_layers, state_size=8, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config = SigLipDualEncoderConfig(vision_config=tower_config, text_config=text, projection_dim=projection_dim,
                                     loss_type="sigmoid", **config_kwargs)
    return SigLipDualEncoderModel(config)


def video_caption_processor(tokenizer, tower_config):
    """A ``SigLipDualEncoderProcessor`` of the tower's ``StormVideoProcessor`` and ``tokenizer``."""
    from ..modeling.processing_dual_encoder import SigLipDualEncoderProcessor
    from ..modeling.video_processing_storm import StormVideoProcessor

    return SigLipDualEncoderProcessor(image_processor=StormVideoProcessor.from_config(tower_config),
                                      tokenizer=tokenizer)


def _tower_of(video_tower):
    """A ``StormModel`` from a stage-1 dual encoder (its ``vision_model``), a STORM model or a saved stage-1 folder."""
    from ..modeling.modeling_storm import StormModel

    if isinstance(video_tower, (str, Path)):
        from ..modeling.modeling_dual_encoder import SigLipDualEncoderModel

        video_tower = SigLipDualEncoderModel.from_pretrained(str(video_tower))
    tower = getattr(video_tower, "vision_model", video_tower)
    tower = getattr(tower, "storm", tower)  # a StormForVideoClassification
    if not isinstance(tower, StormModel):
        raise ValueError(f"video_tower must be a stage-1 dual encoder with a STORM vision tower, a STORM model or its "
                         f"saved folder; got {type(tower).__name__}.")
    return tower


def storm_video_vlm(tokenizer, video_tower=None, tower_config=None, hidden: int = 96, layers: int = 3,
                    state_size: int = 16, projector_layers: int = 2, **config_kwargs):
    """The tiny combined pipeline for CPU training: STORM video tower -> MLP projector -> Mamba LM (``hidden`` x
    ``layers``) over ``tokenizer``'s vocabulary, the video tokens at one ``<video>`` placeholder. ``video_tower``: the
    stage-1 dual encoder (or a STORM model, or a saved stage-1 folder) whose tower weights are copied in (strictly);
    else a fresh tower of ``tower_config`` (default ``storm_video_tower_config()``)."""
    from ..modeling.configuration_ssm_vlm import SsmVlmConfig
    from ..modeling.modeling_ssm_vlm import SsmVlmForConditionalGeneration

    tower = None if video_tower is None else _tower_of(video_tower)
    if tower is not None:
        tower_config = tower.config
    elif tower_config is None:
        tower_config = storm_video_tower_config()
    text = dict(model_type="ssmvl_mamba", vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                state_size=state_size, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id)
    config = SsmVlmConfig(vision_config=tower_config.to_dict(), text_config=text, projector_type="mlp",
                          projector_config={"num_layers": projector_layers}, fusion="prefix",
                          image_token_id=tokenizer.convert_tokens_to_ids("<video>"), **config_kwargs)
    model = SsmVlmForConditionalGeneration(config)
    if tower is not None:
        model.model.vision_tower.load_state_dict(tower.state_dict(), strict=True)
    return model


def video_vlm_processor(model_or_config, tokenizer):
    """The VLM's ``SsmVlmProcessor``: the tower's ``StormVideoProcessor`` (``num_frames`` sampled uniformly) and
    ``tokenizer``, each ``<video>`` expanded to the model's video tokens."""
    from ..modeling.processing_ssm_vlm import SsmVlmProcessor
    from ..modeling.video_processing_storm import StormVideoProcessor

    config = getattr(model_or_config, "config", model_or_config)
    return SsmVlmProcessor.from_config(config, StormVideoProcessor.from_config(config.vision_config), tokenizer)


def decoder_lora_targets(model) -> list:
    """The decoder's LoRA targets of the VLM preset (``lora.vlm_lora_targets``: the Mamba mixers' in_proj / x_proj /
    dt_proj / out_proj), without the projector's Linears (the projector trains in full)."""
    from .lora import vlm_lora_targets

    return [name for name in vlm_lora_targets(model) if name.startswith("language_model.")]


def video_qa_lora_config(model, r: int = 16, alpha: Optional[int] = None, train_projector: bool = True,
                         train_tower: bool = False, modules_to_save: Sequence[str] = ()):
    """``peft.LoraConfig`` for stage 2: LoRA of rank ``r`` on the decoder's SSM projections; the projector trained in
    full (``modules_to_save``) when ``train_projector``, the video tower too when ``train_tower`` (PEFT freezes every
    base weight that is not in ``modules_to_save``), plus any ``modules_to_save`` given."""
    from .lora import lora_config_for

    save = ["projector"] if train_projector else []
    save += ["vision_tower"] if train_tower else []
    save += list(modules_to_save)
    return lora_config_for(model, r=r, alpha=2 * r if alpha is None else alpha,
                           target_modules=decoder_lora_targets(model), modules_to_save=save or None)


# ---------------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------------
def clip_rows(qa_ds):
    """One row per clip of a ``make_moving_shapes_qa_dataset`` (its first question's row: ``video``, ``caption``,
    ``clip``, ...), in clip order."""
    first: Dict[int, int] = {}
    for i, clip in enumerate(qa_ds["clip"]):
        first.setdefault(int(clip), i)
    return qa_ds.select(sorted(first.values()))


def distinct_captions(clips_ds):
    """The first clip of each distinct caption: retrieval needs one right caption per clip (two clips of the same kind
    from different start cells share a caption)."""
    seen, keep = set(), []
    for i, caption in enumerate(clips_ds["caption"]):
        if caption not in seen:
            seen.add(caption)
            keep.append(i)
    return clips_ds.select(keep)


def with_caption_rows(qa_ds, question: str = CAPTION_QUESTION):
    """``qa_ds`` plus one row per clip that asks ``question`` and has the clip's caption as its answer
    (``question_type`` "caption"): dense supervision -- every word of the caption is read off the video -- next to the
    one-word answers."""
    from datasets import concatenate_datasets

    clips = clip_rows(qa_ds)
    captions = clips.map(lambda caption: {"question": [question] * len(caption), "answer": caption,
                                          "question_type": ["caption"] * len(caption)},
                         input_columns=["caption"], batched=True)
    out = concatenate_datasets([qa_ds.with_format(None), captions.with_format(None)])
    out.set_format("numpy", columns=["video"], dtype="uint8", output_all_columns=True)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------------------------------
def align_video_tower(dual, processor, train_clips, out_dir: Union[str, Path], eval_clips=None, max_steps: int = 3000,
                      lr: float = 3e-3, batch_size: int = 32, seed: int = 0, logging_steps: int = 50,
                      save: bool = True, **training_kwargs) -> RecipeResult:
    """Stage 1: ``train_dual_encoder`` on (``video``, ``caption``) rows (sigmoid loss), then video -> caption and
    caption -> video retrieval on ``eval_clips`` (one clip per distinct caption). Returns its metrics (``eval_``
    prefixed retrieval figures) with ``.model``; saved to ``out_dir`` when ``save``."""
    from .dual_encoder import evaluate_retrieval, train_dual_encoder

    result = train_dual_encoder(dual, train_clips, processor, out_dir, max_steps=max_steps, lr=lr,
                                batch_size=batch_size, seed=seed, logging_steps=logging_steps, save=save,
                                image_column="video", text_column="caption", **training_kwargs)
    result["loss_history"] = [e["loss"] for e in result.trainer.state.log_history if "loss" in e]
    if eval_clips is not None:
        queries = distinct_captions(eval_clips)
        scores = evaluate_retrieval(result.model, processor, queries, image_column="video", text_column="caption")
        result.update({f"eval_{k}": v for k, v in scores.items()})
    return result


def train_video_qa(model, processor, train_qa, out_dir: Union[str, Path], eval_qa=None, max_steps: int = 6000,
                   lr: float = 3e-3, batch_size: int = 32, lora_r: Optional[int] = 16, freeze_tower: bool = True,
                   seed: int = 0, logging_steps: int = 50, **training_kwargs) -> RecipeResult:
    """Stage 2: ``vlm.train_vlm`` on (``video``, ``question``, ``answer``) rows: LoRA rank ``lora_r`` on the decoder and
    the projector in full (``video_qa_lora_config``; ``lora_r=None``: the decoder and projector in full), the tower
    frozen unless ``freeze_tower=False``; then ``evaluate_vqa`` on ``eval_qa`` (greedy, exact match overall and per
    question type, ``eval_`` prefixed). The merged model and processor go to ``out_dir``."""
    from .vlm import train_vlm

    lora = None if lora_r is None else video_qa_lora_config(model, r=lora_r, train_tower=not freeze_tower)
    result = train_vlm(model, processor, train_qa, out_dir, eval_ds=eval_qa, max_steps=max_steps, lr=lr,
                       batch_size=batch_size, lora=lora, freeze_vision=freeze_tower, seed=seed,
                       logging_steps=logging_steps, **training_kwargs)
    result["loss_history"] = [e["loss"] for e in result.trainer.state.log_history if "loss" in e]
    return result


def train_video_qa_pipeline(out_dir: Union[str, Path], train_qa, test_qa, tokenizer=None, tower_config=None,
                            stage1_steps: int = 3000, stage1_lr: float = 3e-3, stage1_batch_size: int = 32,
                            stage2_steps: int = 6000, stage2_lr: float = 1e-3, stage2_batch_size: int = 32,
                            lora_r: Optional[int] = None, freeze_tower: bool = True, decoder_hidden: int = 96,
                            decoder_layers: int = 3, seed: int = 0, video_tower=None, caption_rows: bool = False,
                            disable_tqdm: bool = True) -> Dict[str, Any]:
    """Both stages on QA datasets of moving shapes clips (``make_moving_shapes_qa_dataset``, train / held-out test
    split): stage 1 aligns the tower on the train clips' captions (``stage1_steps`` steps; 0 skips it: the tower
    starts fresh, the ablation; ``video_tower``: a trained stage-1 model or folder to start stage 2 from instead),
    stage 2 answers the questions (with ``caption_rows``, also ``with_caption_rows``'s caption questions). The decoder
    built here is fresh, so stage 2 trains it in full by default (``lora_r=None``); LoRA (``lora_r``, e.g. 16) is for
    a pretrained decoder: on this random one it reached 0.655 held-out exact match against 0.713 in full (one shape a
    clip). The default steps (3,000 / 6,000) reach 0.713 with up to two shapes a clip; 600 stage-1 steps left the
    tower too weak to bind colour and shape to an object there (0.480; benchmarks/README.md, video QA). The tower
    stays frozen either way (``freeze_tower``). Folders:
    ``out_dir/stage1-alignment`` (dual encoder) and ``out_dir`` (the VLM + processor). Returns a report: parameter
    counts, tokens to the decoder vs frames x patches, steps, seconds, losses, stage-1 retrieval and stage-2 exact match
    (overall and per question type), and the trained ``model`` and its ``processor``."""
    from transformers import set_seed

    from .moving_shapes import build_moving_shapes_tokenizer

    out_dir = Path(out_dir)
    tokenizer = tokenizer or build_moving_shapes_tokenizer()
    tower_config = tower_config or storm_video_tower_config()
    report: Dict[str, Any] = {"seed": seed}
    set_seed(seed)
    tower = video_tower
    if tower is not None:
        report["stage1"] = {"from": str(tower) if isinstance(tower, (str, Path)) else type(tower).__name__}
    elif stage1_steps > 0:
        dual = video_caption_dual_encoder(tokenizer, tower_config)
        processor = video_caption_processor(tokenizer, tower_config)
        start = time.perf_counter()
        stage1 = align_video_tower(dual, processor, clip_rows(train_qa), out_dir / STAGE1_SUBDIR,
                                   eval_clips=clip_rows(test_qa), max_steps=stage1_steps, lr=stage1_lr,
                                   batch_size=stage1_batch_size, seed=seed, disable_tqdm=disable_tqdm)
        report["stage1"] = {
            "steps": stage1["global_step"], "lr": stage1_lr, "batch_size": stage1_batch_size,
            "train_seconds": round(stage1["train_seconds"], 1), "seconds": round(time.perf_counter() - start, 1),
            "train_loss": stage1["train_loss"], "loss_history": [round(x, 4) for x in stage1["loss_history"]],
            "params": stage1["total_params"],
            "retrieval": {k[len("eval_"):]: v for k, v in stage1.items() if k.startswith("eval_")},
            "video_to_caption_recall@1": stage1.get("eval_image_to_text_recall@1"),
        }
        tower = stage1.model
    set_seed(seed)
    model = storm_video_vlm(tokenizer, video_tower=tower, tower_config=tower_config, hidden=decoder_hidden,
                            layers=decoder_layers)
    processor = video_vlm_processor(model, tokenizer)
    params = count_parameters(model)
    cfg = model.config
    frames = cfg.num_frames
    report["tokens"] = {"frames": frames, "patches_per_frame": cfg.vision_config.tokens_per_frame(),
                        "frames_x_patches": frames * cfg.vision_config.tokens_per_frame(),
                        "after_temporal_pool": cfg.vision_config.token_counts(frames)[0],
                        "video_tokens_to_decoder": cfg.num_image_tokens}
    start = time.perf_counter()
    stage2_rows = with_caption_rows(train_qa) if caption_rows else train_qa
    stage2 = train_video_qa(model, processor, stage2_rows, out_dir, eval_qa=test_qa, max_steps=stage2_steps,
                            lr=stage2_lr, batch_size=stage2_batch_size, lora_r=lora_r, freeze_tower=freeze_tower,
                            seed=seed, disable_tqdm=disable_tqdm)
    report["stage2"] = {
        "steps": stage2["steps"], "lr": stage2_lr, "train_rows": len(stage2_rows), "caption_rows": caption_rows,
        "batch_size": stage2_batch_size, "lora_r": lora_r,
        "tower": "frozen" if freeze_tower else "trained", "train_seconds": round(stage2["train_seconds"], 1),
        "seconds": round(time.perf_counter() - start, 1), "train_loss": stage2["train_loss"],
        "loss_history": [round(x, 4) for x in stage2["loss_history"]],
        "exact_match": stage2.get("eval_exact_match"),
        "exact_match_per_type": {k[len("eval_exact_match_"):]: v for k, v in stage2.items()
                                 if k.startswith("eval_exact_match_")},
        "num_questions": stage2.get("eval_num_questions"),
    }
    report["params"] = {"total": params["total_params"],
                        "tower": sum(p.numel() for p in model.model.vision_tower.parameters()),
                        "projector": sum(p.numel() for p in model.model.projector.parameters()),
                        "decoder": sum(p.numel() for p in model.language_model.parameters())}
    report["output_dir"] = str(out_dir)
    report["model"], report["processor"] = stage2.model, processor
    return report


__all__ = ["storm_video_tower_config", "video_caption_dual_encoder", "video_caption_processor", "storm_video_vlm",
           "video_vlm_processor", "decoder_lora_targets", "video_qa_lora_config", "clip_rows", "distinct_captions",
           "with_caption_rows", "CAPTION_QUESTION",
           "align_video_tower", "train_video_qa", "train_video_qa_pipeline", "STAGE1_SUBDIR"]
