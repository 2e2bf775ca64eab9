"""STORM video processor (modeling/video_processing_storm.py): frame sampling (count, fps, max_frames, short videos),
input formats, resize / rescale / normalise against PIL, clear errors, save / load, and the remote-code round trip
(AutoImageProcessor, AutoProcessor, AutoVideoProcessor's remote path) without ssmvl."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from isolated import run_isolated
from ssmvl.modeling.video_processing_storm import StormVideoProcessor, sample_frame_indices, uniform_indices


def indexed_video(n: int, height: int = 8, width: int = 8) -> np.ndarray:
    """(n, H, W, 3) uint8 whose frame i is filled with 10 * i (+ a channel offset): the output tells the indices."""
    video = np.zeros((n, height, width, 3), dtype=np.uint8)
    video += (10 * np.arange(n, dtype=np.uint8))[:, None, None, None]
    video += np.asarray([0, 1, 2], dtype=np.uint8)
    return video


def kept_indices(pixel_values) -> list:
    """Frame indices back from the processed frames of ``indexed_video`` (no resize, no normalisation)."""
    x = np.asarray(pixel_values)[0, :, 0, 0, 0]  # (T,) red channel of one pixel, rescaled to [0, 1]
    return [int(round(v * 255 / 10)) for v in x]


def plain(**kwargs) -> StormVideoProcessor:
    """A processor that only rescales (no resize, no normalisation): outputs are pixels / 255."""
    settings = dict(do_resize=False, do_normalize=False)
    settings.update(kwargs)
    return StormVideoProcessor(**settings)


def random_video(n=6, height=20, width=24, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# frame sampling
# ---------------------------------------------------------------------------------------------------------------------
def test_uniform_indices():
    assert uniform_indices(10, 4).tolist() == [1, 3, 6, 8]  # the centres of four equal segments
    assert uniform_indices(8, 8).tolist() == list(range(8))
    assert uniform_indices(4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # fewer frames: each repeated, in order
    assert uniform_indices(100, 1).tolist() == [50]


def test_num_frames_sampling_on_the_pixels():
    out = plain(num_frames=4)(indexed_video(10))["pixel_values_videos"]
    assert tuple(out.shape) == (1, 4, 3, 8, 8) and out.dtype == torch.float32
    assert kept_indices(out) == [1, 3, 6, 8]
    assert kept_indices(plain(num_frames=4)(indexed_video(10), num_frames=2)["pixel_values_videos"]) == [2, 7]
    # a shorter video repeats frames (documented default) ...
    assert kept_indices(plain(num_frames=6)(indexed_video(3))["pixel_values_videos"]) == [0, 0, 1, 1, 2, 2]
    # ... or is an error
    with pytest.raises(ValueError, match="Video 0 has 3 frames, fewer than the 6 requested"):
        plain(num_frames=6, fewer_frames="error")(indexed_video(3))
    with pytest.raises(ValueError, match="Video 1 has 3 frames, fewer than the 4 requested"):
        plain(num_frames=4)([indexed_video(5), indexed_video(3)], fewer_frames="error")


def test_fps_sampling():
    proc = plain(num_frames=None, fps=2.0)
    # 24 frames at 8 fps = 3 s -> 6 frames, one per half second
    assert kept_indices(proc(indexed_video(24), video_fps=8.0)["pixel_values_videos"]) == [2, 6, 10, 14, 18, 22]
    assert sample_frame_indices(30, fps=2.0, video_fps=10.0).tolist() == [2, 7, 12, 17, 22, 27]
    assert sample_frame_indices(3, fps=1.0, video_fps=30.0).tolist() == [1]  # under a second: at least one frame
    # a call's fps replaces the processor's num_frames and the other way round
    assert plain(num_frames=3)(indexed_video(20), fps=1.0, video_fps=5.0)["pixel_values_videos"].shape[1] == 4
    assert proc(indexed_video(20), num_frames=5)["pixel_values_videos"].shape[1] == 5
    # one rate per video
    out = proc([indexed_video(8), indexed_video(16)], video_fps=[4.0, 8.0])["pixel_values_videos"]
    assert out.shape[1] == 4
    with pytest.raises(ValueError, match="needs the video's own frame rate: pass video_fps"):
        proc(indexed_video(20))
    with pytest.raises(ValueError, match="end with the same frames and size to stack; got video 0: 4 frames"):
        proc([indexed_video(8), indexed_video(16)], video_fps=4.0)
    with pytest.raises(ValueError, match="Got 1 video_fps values for 2 videos"):
        proc([indexed_video(8), indexed_video(16)], video_fps=[4.0])


def test_max_frames():
    # every frame / fps sampling past the model's limit: sampled uniformly down to max_frames (not an error)
    assert kept_indices(plain(num_frames=None, max_frames=4)(indexed_video(10))["pixel_values_videos"]) == [1, 3, 6, 8]
    proc = plain(num_frames=None, fps=5.0, max_frames=3)
    assert proc(indexed_video(20), video_fps=10.0)["pixel_values_videos"].shape[1] == 3
    assert plain(num_frames=None, max_frames=12)(indexed_video(10))["pixel_values_videos"].shape[1] == 10
    # asking for more than the model takes is an error
    with pytest.raises(ValueError, match="num_frames=16 is more than max_frames=8"):
        StormVideoProcessor(num_frames=16, max_frames=8)
    with pytest.raises(ValueError, match="num_frames=9 is more than max_frames=8"):
        plain(num_frames=4, max_frames=8)(indexed_video(10), num_frames=9)
    # sampling switched off: a long video is an error, a short one passes as it is
    with pytest.raises(ValueError, match="Video 0 has 10 frames, more than max_frames=8, and do_sample_frames=False"):
        plain(max_frames=8)(indexed_video(10), do_sample_frames=False)
    assert kept_indices(plain(num_frames=2)(indexed_video(5), do_sample_frames=False)["pixel_values_videos"]) == \
        [0, 1, 2, 3, 4]


# ---------------------------------------------------------------------------------------------------------------------
# inputs, resize, normalise
# ---------------------------------------------------------------------------------------------------------------------
def test_input_formats_agree():
    video = random_video()
    proc = StormVideoProcessor(num_frames=4, size=16)
    expected = proc(video)["pixel_values_videos"]
    assert tuple(expected.shape) == (1, 4, 3, 16, 16)
    as_tensor = torch.from_numpy(video).permute(0, 3, 1, 2)  # (T, 3, H, W)
    for other in ([Image.fromarray(f) for f in video], list(video), as_tensor, list(as_tensor),
                  video.astype(np.int64), list(video.astype(np.int32))):
        assert torch.equal(proc(other)["pixel_values_videos"], expected)
    batch = proc([video, as_tensor, [Image.fromarray(f) for f in video]])["pixel_values_videos"]
    assert tuple(batch.shape) == (3, 4, 3, 16, 16) and all(torch.equal(b, expected[0]) for b in batch)
    assert torch.equal(proc(np.stack([video, video]))["pixel_values_videos"][1], expected[0])
    assert torch.equal(proc(torch.stack([as_tensor, as_tensor]))["pixel_values_videos"][0], expected[0])
    numpy_out = proc(video, return_tensors="np")["pixel_values_videos"]
    assert isinstance(numpy_out, np.ndarray) and np.array_equal(numpy_out, expected.numpy())
    # float pixels are taken as [0, 1] (not rescaled): resized without rounding to 8 bits (bilinear: within a level of
    # the uint8 path; bicubic may overshoot [0, 1] where uint8 clips), so close, not equal
    bilinear = StormVideoProcessor(num_frames=4, size=16, resample="bilinear")
    floats = bilinear(as_tensor.float() / 255)["pixel_values_videos"]
    from_uint8 = bilinear(video)["pixel_values_videos"]
    assert torch.allclose(floats, from_uint8, atol=1.01 / 255 / 0.5) and not torch.equal(floats, from_uint8)
    torch.testing.assert_close(plain()(as_tensor.float() / 255)["pixel_values_videos"],
                               plain()(video)["pixel_values_videos"], rtol=0, atol=1e-6)


def test_resize_rescale_normalize_match_pil():
    video = random_video(n=3, height=20, width=30)
    proc = StormVideoProcessor(num_frames=3, size={"height": 12, "width": 16}, resample="bilinear",
                               image_mean=[0.4, 0.5, 0.6], image_std=[0.2, 0.25, 0.3])
    out = proc(video)["pixel_values_videos"][0].numpy()  # (3, 3, 12, 16)
    for t in range(3):
        resized = np.asarray(Image.fromarray(video[t]).resize((16, 12), resample=Image.Resampling.BILINEAR))
        want = (resized.astype(np.float32) / 255 - np.asarray([0.4, 0.5, 0.6], dtype=np.float32)) / np.asarray(
            [0.2, 0.25, 0.3], dtype=np.float32)
        np.testing.assert_allclose(out[t], want.transpose(2, 0, 1), rtol=0, atol=1e-5)
    # default: bicubic to 224 x 224, mean = std = 0.5 -> values in [-1, 1]
    default = StormVideoProcessor()(random_video(n=2))["pixel_values_videos"]
    assert tuple(default.shape) == (1, 8, 3, 224, 224) and default.min() >= -1.0 and default.max() <= 1.0


def test_pil_modes_and_videos_of_different_sizes():
    gray = [Image.fromarray(np.full((10, 10), 100, dtype=np.uint8), mode="L")] * 2
    rgba = [Image.fromarray(np.full((12, 14, 4), 200, dtype=np.uint8))] * 2
    out = plain(num_frames=2, do_resize=True, size=10)([gray, rgba])["pixel_values_videos"]
    assert torch.allclose(out[0], torch.full_like(out[0], 100 / 255)) and torch.allclose(out[1], torch.full_like(
        out[1], 200 / 255))
    with pytest.raises(ValueError, match="Video 0, frame 0: a 'L' image with do_convert_rgb=False"):
        plain(num_frames=2)(gray, do_convert_rgb=False)
    with pytest.raises(ValueError, match="end with the same frames and size to stack; got video 0: 2 frames of 10x10"):
        plain(num_frames=2)([gray, rgba])  # no resize: different sizes cannot stack


def test_moving_shapes_clips_in():
    from ssmvl.training.moving_shapes import make_moving_shapes_dataset

    ds = make_moving_shapes_dataset(4, seed=0)
    proc = StormVideoProcessor(num_frames=8, size=32)
    out = proc(ds[:4]["video"])["pixel_values_videos"]  # (4, 16, 32, 32, 3) uint8 -> (4, 8, 3, 32, 32)
    assert tuple(out.shape) == (4, 8, 3, 32, 32)
    widened = ds.with_format("numpy")[:4]["video"]  # datasets' default: int64 pixels
    assert widened.dtype == np.int64 and torch.equal(proc(widened)["pixel_values_videos"], out)
    frame = ds[0]["video"][uniform_indices(16, 8)[3]]
    np.testing.assert_allclose(out[0, 3].numpy(), (frame.transpose(2, 0, 1) / 255 - 0.5) / 0.5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------------------------------
def test_input_errors():
    proc = plain(num_frames=2)
    with pytest.raises(ValueError, match="empty list: no video"):
        proc([])
    with pytest.raises(ValueError, match="Video 0 has no frames"):
        proc(np.zeros((0, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="Video 1 has no frames"):
        proc([[Image.new("RGB", (8, 8))], []])
    frames = [Image.new("RGB", (8, 8))] * 2 + [Image.new("RGB", (9, 8))]
    with pytest.raises(ValueError, match=r"Video 0: frame 2 is 8x9 \(height x width\) but frame 0 is 8x8"):
        proc(frames)
    with pytest.raises(ValueError, match="Video 1: frame 1 is 6x8"):
        proc([indexed_video(2), [np.zeros((8, 8, 3), np.uint8), np.zeros((6, 8, 3), np.uint8)]])
    with pytest.raises(ValueError, match=r"Drop the alpha channel: video\[..., :3\]"):
        proc(np.zeros((2, 8, 8, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"channels-first: numpy videos are channels-last"):
        proc(np.zeros((2, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"channels-last: torch videos are channels-first"):
        proc(torch.zeros(2, 8, 8, 3))
    with pytest.raises(ValueError, match=r"Video 0, frame 1: expected a PIL image, .* got ndarray of shape \(8, 8\)"):
        proc([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="a single image, not a video"):
        proc(Image.new("RGB", (8, 8)))
    with pytest.raises(ValueError, match="has 4 dimensions"):
        proc(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="integer pixels must be in 0..255, got 0..300"):
        proc(np.full((2, 4, 4, 3), 300, dtype=np.int64) * np.asarray([0, 1, 1]))
    with pytest.raises(ValueError, match="pixels must be integers"):
        proc(np.zeros((2, 4, 4, 3), dtype=bool))
    with pytest.raises(TypeError, match="unknown arguments"):
        proc(indexed_video(2), frames=2)
    with pytest.raises(TypeError, match="Videos must be"):
        proc("video.mp4")


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_frames=4, fps=1.0), "Give num_frames"),
    (dict(num_frames=0), "num_frames must be a positive integer"),
    (dict(num_frames=None, fps=-1.0), "fps must be a positive number"),
    (dict(fewer_frames="pad"), "fewer_frames must be one of"),
    (dict(size=(0, 8)), "size must hold positive integers"),
    (dict(size={"shortest_edge": 8}), "size must be an int"),
    (dict(resample="sharp"), "Unknown resample"),
    (dict(image_mean=[0.5, 0.5]), "image_mean needs one value per RGB channel"),
    (dict(image_std=0.0), "image_std must not be 0"),
])
def test_settings_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StormVideoProcessor(**kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------------------------------
def test_save_load_and_from_config(tmp_path):
    proc = StormVideoProcessor(num_frames=None, fps=2.0, max_frames=6, size=(24, 32), fewer_frames="error")
    proc.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["auto_map"] == {name: "video_processing_storm.StormVideoProcessor"
                                 for name in ("AutoImageProcessor", "AutoVideoProcessor", "AutoProcessor")}
    assert saved["num_frames"] is None and saved["fps"] == 2.0 and saved["size"] == {"height": 24, "width": 32}
    assert (tmp_path / "video_processing_storm.py").is_file()
    loaded = StormVideoProcessor.from_pretrained(tmp_path)
    for name in ("num_frames", "fps", "max_frames", "size", "fewer_frames", "resample", "image_mean"):
        assert getattr(loaded, name) == getattr(proc, name), name
    assert StormVideoProcessor.from_pretrained(tmp_path, max_frames=3).max_frames == 3

    from ssmvl.modeling.configuration_storm import StormConfig

    config = StormConfig(image_size=48, patch_size=8, num_frames=6)
    from_config = StormVideoProcessor.from_config(config, image_mean=0.0, image_std=1.0)
    assert (from_config.size, from_config.num_frames, from_config.max_frames) == ({"height": 48, "width": 48}, 6, 6)
    assert from_config.image_mean == [0.0] * 3


REMOTE = r"""
import json
import numpy as np, torch
from transformers import AutoImageProcessor, AutoProcessor
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.utils import is_torchvision_available

folder = "saved"
video = np.load("video.npy")
results = {}
for name, auto in (("image", AutoImageProcessor), ("processor", AutoProcessor)):
    proc = auto.from_pretrained(folder, trust_remote_code=True)
    out = proc(video, video_fps=10.0)["pixel_values_videos"]
    np.save(f"out_{name}.npy", out.numpy())
    results[name] = [type(proc).__name__, type(proc).__module__, proc.fps, proc.max_frames]
# AutoVideoProcessor's remote-code branch (both 5.0 and 5.24): class from auto_map, then its from_pretrained
config = json.load(open(f"{folder}/preprocessor_config.json"))
cls = get_class_from_dynamic_module(config["auto_map"]["AutoVideoProcessor"], folder)
results["video_branch"] = [cls.__name__, cls.from_pretrained(folder).fps]
if is_torchvision_available():
    from transformers import AutoVideoProcessor
    results["auto_video"] = type(AutoVideoProcessor.from_pretrained(folder, trust_remote_code=True)).__name__
else:
    try:
        from transformers import AutoVideoProcessor
        AutoVideoProcessor.from_pretrained(folder, trust_remote_code=True)
    except ImportError as err:
        results["auto_video"] = "needs torchvision" if "orchvision" in str(err) else str(err)
print(json.dumps(results))
"""


def test_remote_code_without_ssmvl(tmp_path):
    proc = StormVideoProcessor(num_frames=None, fps=2.0, max_frames=5, size=16)
    proc.save_pretrained(tmp_path / "saved")
    video = random_video(n=20, height=12, width=12, seed=3)
    np.save(tmp_path / "video.npy", video)
    expected = proc(video, video_fps=10.0)["pixel_values_videos"].numpy()
    assert expected.shape == (1, 4, 3, 16, 16)
    results = json.loads(run_isolated(REMOTE, cwd=tmp_path).stdout.strip().splitlines()[-1])
    for name in ("image", "processor"):
        class_name, module, fps, max_frames = results[name]
        assert class_name == "StormVideoProcessor" and module.startswith("transformers_modules"), results
        assert (fps, max_frames) == (2.0, 5)
        assert np.array_equal(np.load(tmp_path / f"out_{name}.npy"), expected)
    assert results["video_branch"] == ["StormVideoProcessor", 2.0]
    assert results["auto_video"] in ("StormVideoProcessor", "needs torchvision")
