"""Video classification recipe (training/video.py): the collator, a few Trainer steps on tiny moving shapes clips,
evaluation (accuracy, tokens handed to the head), and the saved folder reloaded through the Auto classes with
trust_remote_code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssmvl.training.moving_shapes import make_moving_shapes_dataset
from ssmvl.training.video import (VideoCollator, evaluate_video_classifier, storm_video_classifier,
                                  train_video_classifier, video_processor_for)

FRAMES, SIZE = 4, 16  # clips of 8 frames of 16 px, 4 sampled; 8 px patches: 4 tokens a frame, 16 a clip


@pytest.fixture(scope="module")
def clips():
    return make_moving_shapes_dataset(16, seed=0, split="train", num_frames=8, image_size=SIZE)


def tiny_model(keep_ratios=(0.5,), labels=None, clips=None):
    torch.manual_seed(0)
    return storm_video_classifier(num_frames=FRAMES, image_size=SIZE, hidden=16, layers=len(keep_ratios),
                                  keep_ratios=keep_ratios, labels=clips if labels is None else labels,
                                  num_memory_tokens=2, state_size=4)


def test_builder_labels_and_sizes(clips):
    model = tiny_model(clips=clips)
    cfg = model.config
    assert cfg.id2label == {0: "left", 1: "right", 2: "up", 3: "down"} and cfg.label2id["down"] == 3
    assert (cfg.num_frames, cfg.image_size, cfg.patch_size, cfg.keep_ratios) == (FRAMES, SIZE, 8, [0.5])
    assert cfg.conv_kernel == cfg.tokens_per_frame() + 1 == 5  # the conv reaches the same patch one frame back
    assert storm_video_classifier(labels=["a", "b"], hidden=16).config.num_labels == 2  # names work too
    with pytest.raises(ValueError, match="ClassLabel"):
        storm_video_classifier(labels=[])


def test_collator_shapes_and_labels(clips):
    processor = video_processor_for(tiny_model(clips=clips).config)
    rows = [clips[i] for i in range(3)]
    batch = VideoCollator(processor)(rows)
    assert set(batch) == {"pixel_values_videos", "labels"}
    assert tuple(batch["pixel_values_videos"].shape) == (3, FRAMES, 3, SIZE, SIZE)
    assert batch["pixel_values_videos"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [r["label"] for r in rows]
    # the frames are the processor's: uniform sampling of the 8 frames, normalised with mean = std = 0.5
    expected = processor([rows[0]["video"]])["pixel_values_videos"][0]
    torch.testing.assert_close(batch["pixel_values_videos"][0], expected)
    frame = torch.as_tensor(np.asarray(rows[0]["video"])[processor.sample_frame_indices(8)[0]], dtype=torch.float32)
    torch.testing.assert_close(batch["pixel_values_videos"][0, 0], (frame.permute(2, 0, 1) / 255 - 0.5) / 0.5)
    assert "labels" not in VideoCollator(processor)([{"video": rows[0]["video"]}])


def test_train_evaluate_save_reload(clips, tmp_path):
    from transformers import AutoModelForVideoClassification, AutoProcessor

    model = tiny_model(clips=clips)
    processor = video_processor_for(model.config)
    batch = VideoCollator(processor)([clips[i] for i in range(len(clips))])
    with torch.no_grad():
        loss_before = float(model(**batch).loss)
    result = train_video_classifier(model, processor, clips, tmp_path / "run", max_steps=12, lr=1e-2, batch_size=8,
                                    warmup_ratio=0.0, logging_steps=4, disable_tqdm=True, save_strategy="no")
    assert result["global_step"] == 12 and len(result["loss_history"]) == 3
    model = result.model.eval()
    with torch.no_grad():
        loss_after = float(model(**batch).loss)
    assert loss_after < loss_before, (loss_before, loss_after)

    scores = evaluate_video_classifier(model, processor, clips, batch_size=5)  # 16 rows: a short last batch
    assert 0.0 <= scores["accuracy"] <= 1.0
    assert scores["tokens_to_head"] == model.config.num_output_tokens(FRAMES) == 8  # 4 frames x 4 patches, half kept
    assert scores["frames_x_patches"] == 16 and scores["token_reduction"] == 2.0
    assert scores["memory_tokens"] == 2

    out = tmp_path / "run"
    assert (out / "config.json").is_file() and (out / "preprocessor_config.json").is_file()
    loaded = AutoModelForVideoClassification.from_pretrained(out, trust_remote_code=True).eval()
    loaded_processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert type(loaded_processor).__name__ == "StormVideoProcessor"
    assert loaded.config.id2label == model.config.id2label
    rows = [clips[i] for i in range(4)]
    with torch.no_grad():
        again = loaded(**VideoCollator(loaded_processor)(rows)).logits
        # remote code (transformers 5.0 loads the folder's copy) runs the eager CPU scan, the package its C++ kernel
        torch.testing.assert_close(again, model(**VideoCollator(processor)(rows)).logits, rtol=1e-5, atol=1e-6)


def test_cli_train_video_parses():
    from ssmvl.training.cli import build_parser

    args = build_parser().parse_args(["train-video", "--out", "x", "--steps", "5", "--keep-ratio", "0.25"])
    assert (args.command, args.out, args.steps, args.keep_ratio, args.frames) == ("train-video", "x", 5, 0.25, 8)


def test_main_job_video_step_runs_and_reports(tmp_path):
    from ssmvl.training.main_job import video_step

    summary = video_step(tmp_path, steps=3, clips=16, test_clips=8, batch_size=8, progress=False)
    assert summary["video_steps"] == 3 and 0.0 <= summary["video_accuracy"] <= 1.0
    assert summary["video_tokens_to_head"] == 8 * 16  # keep ratio 1.0: every patch of the 8 sampled frames
    assert (tmp_path / "storm-video" / "config.json").is_file()
