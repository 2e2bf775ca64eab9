"""Video processor of the STORM family (``model_type`` "ssmvl_storm"): picks frames, resizes, rescales and normalises
them with PIL + numpy (no torchvision), and returns ``pixel_values_videos`` of shape (batch, frames, 3, height, width).
Imports only numpy, PIL, torch and transformers: this file ships next to config.json and loads without ssmvl.

Why ``BaseImageProcessor`` and not transformers' ``BaseVideoProcessor``: in transformers 5.0 ``BaseVideoProcessor`` is a
torchvision "fast" image processor (``@requires(backends=("vision", "torchvision"))``); in 5.24 it is
``VideoProcessorMixin`` + ``TorchvisionBackend``, torchvision again (only the mixin is free of it, and 5.0 lacks it).
``AutoVideoProcessor`` itself is a torchvision-only placeholder in both releases (without torchvision any use raises
ImportError, even for remote code). So ``StormVideoProcessor`` subclasses ``BaseImageProcessor`` (the PIL / numpy
base, torchvision-free in 5.0 and 5.24) and does all its work itself:

* ``save_pretrained`` writes ``preprocessor_config.json`` -- the file ``AutoImageProcessor`` reads and the one
  ``AutoVideoProcessor`` falls back to -- with ``auto_map`` entries for ``AutoImageProcessor``, ``AutoVideoProcessor``
  and ``AutoProcessor``, all naming ``video_processing_storm.StormVideoProcessor``, and copies this file.
* So, with ``trust_remote_code=True`` and no ssmvl: ``AutoImageProcessor.from_pretrained(folder)`` and
  ``AutoProcessor.from_pretrained(folder)`` load it (tested under transformers 5.0 and 5.24). Where torchvision is
  installed, ``AutoVideoProcessor.from_pretrained(folder)`` takes its remote-code branch (5.0 and 5.24 both read
  ``preprocessor_config.json`` when there is no video config, take the class from ``auto_map``, call its
  ``from_pretrained``); the tests run that branch step by step, as torchvision is not installed here.

Frames (``num_frames`` / ``fps`` / ``max_frames``):

* ``num_frames`` (default 8): that many frames, uniformly over the clip: frame ``floor((i + 0.5) * n / num_frames)``
  for i < num_frames (the centre of each of ``num_frames`` equal segments of the ``n`` frames).
* ``fps``: one frame per ``1 / fps`` seconds, i.e. ``max(1, round(n * fps / video_fps))`` frames picked the same
  uniform way; needs the video's own rate, ``video_fps=`` at call time (one number, or one per video).
* ``do_sample_frames=False`` (or ``num_frames=None`` and ``fps=None``): every frame, as given.
* A call's ``num_frames`` or ``fps`` replaces the processor's choice (giving both is an error, as it is at init).
* Fewer frames than requested: ``fewer_frames="repeat"`` (default) samples the same uniform way, so frames repeat
  (about evenly, in order: 4 frames to 8 gives 0 0 1 1 2 2 3 3); ``fewer_frames="error"`` raises ``ValueError``.
* ``max_frames`` (the model's limit, e.g. ``StormConfig.num_frames``; None: no limit): a clip that would give more
  frames (``fps`` sampling, or every frame) is sampled uniformly down to ``max_frames`` frames -- documented sampling,
  not an error; asking for ``num_frames > max_frames`` is a ``ValueError``, and so is a clip longer than
  ``max_frames`` with ``do_sample_frames=False`` (sampling was switched off).

Inputs, one video or a batch: a list of PIL images; a ``numpy`` array (T, H, W, 3) (channels last) or a list of
(H, W, 3) arrays; a ``torch`` tensor (T, 3, H, W) (channels first) or a list of (3, H, W) tensors; a batch is a list
of those, a (B, T, H, W, 3) array or a (B, T, 3, H, W) tensor. Integer pixels are 0..255 (any integer dtype, e.g. the
int64 that ``datasets`` gives by default) and are multiplied by ``rescale_factor`` when ``do_rescale``; float pixels
are taken as already in [0, 1] and never rescaled. PIL images are converted to RGB (``do_convert_rgb``); arrays and
tensors must have 3 channels. Errors (``ValueError``) name the video and frame: a video with no frames, frames of
different sizes in one video (resize them first; videos of one batch may differ in size, each is resized), a wrong
channel count or layout.

Resizing (``do_resize``, to ``size`` {"height", "width"}, ``resample`` a PIL filter, bicubic by default) goes through
``PIL.Image.resize`` as transformers' slow (PIL) image processors do: uint8 frames as RGB images, float frames one
channel at a time as 32-bit float images (mode "F", no rounding to 8 bits; bicubic may overshoot [0, 1] a little there,
where uint8 results are clipped to 0..255). Then ``(x * rescale_factor - mean) / std``
per channel (``image_mean`` / ``image_std``, 0.5 by default as SigLIP frame encoders expect).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple, TypedDict, Union

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

_RESAMPLE_NAMES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
FEWER_FRAMES_POLICIES = ("repeat", "error")
AUTO_CLASSES = ("AutoImageProcessor", "AutoVideoProcessor", "AutoProcessor")


class StormVideoProcessorKwargs(TypedDict, total=False):
    """Every setting of [`StormVideoProcessor`] (what ``from_pretrained(..., **kwargs)`` may override)."""

    num_frames: Optional[int]
    fps: Optional[float]
    max_frames: Optional[int]
    fewer_frames: str
    do_sample_frames: bool
    do_resize: bool
    size: Dict[str, int]
    resample: int
    do_rescale: bool
    rescale_factor: float
    do_normalize: bool
    image_mean: List[float]
    image_std: List[float]
    do_convert_rgb: bool


_SETTINGS = tuple(StormVideoProcessorKwargs.__annotations__)


# ---------------------------------------------------------------------------------------------------------------------
# frame sampling
# ---------------------------------------------------------------------------------------------------------------------
def uniform_indices(num_video_frames: int, count: int) -> np.ndarray:
    """``count`` frame indices spread uniformly over ``num_video_frames`` frames: the centre of each of ``count``
    equal segments, ``floor((i + 0.5) * n / count)``; repeats frames (in order) when ``count > n``."""
    return np.minimum(((np.arange(count) + 0.5) * num_video_frames / count).astype(np.int64), num_video_frames - 1)


def sample_frame_indices(num_video_frames: int, num_frames: Optional[int] = None, fps: Optional[float] = None,
                         video_fps: Optional[float] = None, max_frames: Optional[int] = None,
                         fewer_frames: str = "repeat", do_sample_frames: bool = True,
                         video_index: int = 0) -> np.ndarray:
    """Indices of the frames [`StormVideoProcessor`] keeps from a video of ``num_video_frames`` frames (module
    docstring: ``num_frames`` / ``fps`` + ``video_fps`` / every frame, ``max_frames``, ``fewer_frames``)."""
    n = int(num_video_frames)
    if n < 1:
        raise ValueError(f"Video {video_index} has no frames.")
    if num_frames is not None and fps is not None:
        raise ValueError(f"Give num_frames ({num_frames}) or fps ({fps}), not both.")
    if not do_sample_frames:
        if max_frames is not None and n > max_frames:
            raise ValueError(f"Video {video_index} has {n} frames, more than max_frames={max_frames}, and "
                             "do_sample_frames=False: sample frames (num_frames=... or fps=...) or shorten the video.")
        return np.arange(n)
    if num_frames is not None:
        if max_frames is not None and num_frames > max_frames:
            raise ValueError(f"num_frames={num_frames} is more than max_frames={max_frames} (the most frames the model "
                             "takes); ask for fewer frames.")
        count = int(num_frames)
    elif fps is not None:
        if video_fps is None:
            raise ValueError(f"Sampling at fps={fps} needs the video's own frame rate: pass video_fps=... (one number, "
                             "or one per video), or sample a fixed count with num_frames=...")
        if not video_fps > 0:
            raise ValueError(f"video_fps must be positive, got {video_fps} for video {video_index}.")
        count = max(1, int(math.floor(n * float(fps) / float(video_fps) + 0.5)))
    else:
        count = n
    if max_frames is not None and count > max_frames:  # fps / every frame: sampled down to the model's limit
        count = int(max_frames)
    if count > n and fewer_frames == "error":
        raise ValueError(f"Video {video_index} has {n} frames, fewer than the {count} requested; pass fewer frames "
                         "or fewer_frames='repeat' to repeat frames.")
    return np.arange(n) if count == n else uniform_indices(n, count)


# ---------------------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------------------
def _is_frame(x) -> bool:
    return isinstance(x, Image.Image) or (isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 3)


def _split_batch(videos) -> list:
    """One video or a batch -> a list of videos (each a PIL / array / tensor frame list, or a 4-D array / tensor)."""
    if isinstance(videos, Image.Image):
        raise ValueError("Got a single image, not a video: pass a list of frames ([image] for a one-frame video).")
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        kind = "numpy array (T, H, W, 3)" if isinstance(videos, np.ndarray) else "torch tensor (T, 3, H, W)"
        if videos.ndim == 5:
            return list(videos)
        if videos.ndim == 4:
            return [videos]
        raise ValueError(f"A video as a {kind} has 4 dimensions (a batch 5); got shape {tuple(videos.shape)}.")
    if isinstance(videos, (list, tuple)):
        if len(videos) == 0:
            raise ValueError("Got an empty list: no video (and no frames) to process.")
        if _is_frame(videos[0]):
            return [videos]
        return list(videos)
    raise TypeError("Videos must be a list of PIL images, a numpy array (T, H, W, 3), a torch tensor (T, 3, H, W), or "
                    f"a list of those; got {type(videos).__name__}.")


def _frames_of(video, v: int, do_convert_rgb: bool) -> list:
    """A video -> a list of (H, W, 3) numpy frames (uint8 / float views; PIL images stay PIL until used), checked:
    frames present, 3 channels, one size."""
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3:
            hint = ""
            if video.ndim == 4 and video.shape[1] == 3:
                hint = " It looks channels-first: numpy videos are channels-last, use video.transpose(0, 2, 3, 1)."
            elif video.ndim == 4 and video.shape[-1] == 4:
                hint = " Drop the alpha channel: video[..., :3]."
            elif video.ndim == 4 and video.shape[-1] == 1:
                hint = " Repeat the grey channel: np.repeat(video, 3, axis=-1)."
            raise ValueError(f"Video {v}: a numpy video must be (frames, height, width, 3) RGB; got shape "
                             f"{video.shape}.{hint}")
        frames = list(video)
    elif isinstance(video, torch.Tensor):
        if video.ndim != 4 or video.shape[1] != 3:
            hint = ""
            if video.ndim == 4 and video.shape[-1] == 3:
                hint = " It looks channels-last: torch videos are channels-first, use video.permute(0, 3, 1, 2)."
            raise ValueError(f"Video {v}: a torch video must be (frames, 3, height, width) RGB; got shape "
                             f"{tuple(video.shape)}.{hint}")
        frames = list(video.detach().cpu().permute(0, 2, 3, 1).numpy())
    elif isinstance(video, (list, tuple)):
        frames = []
        for i, frame in enumerate(video):
            if isinstance(frame, Image.Image):
                if frame.mode != "RGB" and not do_convert_rgb:
                    raise ValueError(f"Video {v}, frame {i}: a {frame.mode!r} image with do_convert_rgb=False; "
                                     "pass RGB frames or do_convert_rgb=True.")
                frames.append(frame)
            elif isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[-1] == 3:
                frames.append(frame)
            elif isinstance(frame, torch.Tensor) and frame.ndim == 3 and frame.shape[0] == 3:
                frames.append(frame.detach().cpu().permute(1, 2, 0).numpy())
            else:
                shape = getattr(frame, "shape", None)
                raise ValueError(f"Video {v}, frame {i}: expected a PIL image, a (H, W, 3) numpy array or a (3, H, W) "
                                 f"torch tensor; got {type(frame).__name__}" + (f" of shape {tuple(shape)}" if shape
                                                                                  is not None else "") + ".")
    else:
        raise ValueError(f"Video {v}: expected a list of frames, a (T, H, W, 3) numpy array or a (T, 3, H, W) torch "
                         f"tensor; got {type(video).__name__}.")
    if not frames:
        raise ValueError(f"Video {v} has no frames.")
    sizes = [(f.height, f.width) if isinstance(f, Image.Image) else tuple(f.shape[:2]) for f in frames]
    if 0 in sizes[0]:
        raise ValueError(f"Video {v}: the frames are {sizes[0][0]}x{sizes[0][1]} (height x width), an empty image; "
                         "pass frames of at least 1x1 pixels.")
    for i, size in enumerate(sizes):
        if size != sizes[0]:
            raise ValueError(f"Video {v}: frame {i} is {size[0]}x{size[1]} (height x width) but frame 0 is "
                             f"{sizes[0][0]}x{sizes[0][1]}; all frames of a video must have one size (resize them "
                             "first).")
    return frames


def _to_array(frame, v: int, i: int) -> np.ndarray:
    """(H, W, 3) uint8 (integer pixels) or float32 (float pixels, a 32-bit float PIL image per channel to resize)."""
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB") if frame.mode != "RGB" else frame, dtype=np.uint8)
    if np.issubdtype(frame.dtype, np.integer):
        if frame.dtype != np.uint8 and (frame.min() < 0 or frame.max() > 255):
            raise ValueError(f"Video {v}, frame {i}: integer pixels must be in 0..255, got "
                             f"{frame.min()}..{frame.max()}.")
        return frame.astype(np.uint8, copy=False)
    if np.issubdtype(frame.dtype, np.floating):
        frame = frame.astype(np.float32, copy=False)
        if not np.isfinite(frame).all():
            raise ValueError(f"Video {v}, frame {i}: {int((~np.isfinite(frame)).sum())} NaN or infinite pixel value(s); "
                             "check the decoding / earlier preprocessing of the video.")
        return frame
    raise ValueError(f"Video {v}, frame {i}: pixels must be integers (0..255) or floats (0..1), got {frame.dtype}.")


def _resize(frame: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    if frame.dtype == np.uint8:
        return np.asarray(Image.fromarray(frame).resize((width, height), resample=resample))
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(frame[..., c])).resize(
        (width, height), resample=resample)) for c in range(frame.shape[-1])]
    return np.stack(channels, axis=-1)


# ---------------------------------------------------------------------------------------------------------------------
# the processor
# ---------------------------------------------------------------------------------------------------------------------
def _size_dict(size) -> Dict[str, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        size = {"height": size, "width": size}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if not isinstance(size, dict) or set(size) != {"height", "width"}:
        raise ValueError(f"size must be an int, a (height, width) pair or {{'height': h, 'width': w}}; got {size!r}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size.values()):
        raise ValueError(f"size must hold positive integers, got {size!r}")
    return {"height": int(size["height"]), "width": int(size["width"])}


def _resample_id(resample) -> int:
    if isinstance(resample, str):
        if resample.lower() not in _RESAMPLE_NAMES:
            raise ValueError(f"Unknown resample {resample!r}; use one of {tuple(_RESAMPLE_NAMES)} or a PIL filter id")
        return _RESAMPLE_NAMES[resample.lower()]
    if int(resample) not in _RESAMPLE_NAMES.values():
        raise ValueError(f"Unknown resample {resample!r}; use one of {tuple(_RESAMPLE_NAMES)} or a PIL filter id")
    return int(resample)


def _check_count(name: str, value, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def _check_fps(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"fps must be a positive number or None, got {value!r}")
    return float(value)


def _check_factor(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not math.isfinite(value):
        raise ValueError(f"rescale_factor must be a finite number (1/255 for 0..255 pixels), got {value!r}")
    return float(value)


def _channel_values(name: str, value) -> List[float]:
    """One finite number per RGB channel (a single number is used for all three); image_std must not hold a 0."""
    values = [value] * 3 if isinstance(value, (int, float, np.floating)) else value
    if (isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple, np.ndarray)) or len(values) != 3
            or not all(isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(v)
                       for v in values)):
        raise ValueError(f"{name} needs one value per RGB channel (3 finite numbers), got {value!r}")
    if name == "image_std" and any(v == 0 for v in values):
        raise ValueError(f"image_std must not be 0 (the pixels are divided by it), got {value!r}")
    return [float(v) for v in values]


class StormVideoProcessor(BaseImageProcessor):
    r"""
    Turns videos into `pixel_values_videos` (batch, frames, 3, height, width) float32 for STORM models (see the module
    docstring for inputs, frame sampling and errors). A `BaseImageProcessor` (PIL / numpy, no torchvision) saved with
    `auto_map` for `AutoImageProcessor`, `AutoVideoProcessor` and `AutoProcessor`.

    Args:
        num_frames (`int`, *optional*, defaults to 8): frames kept per video, uniformly over the clip (None: see `fps`).
        fps (`float`, *optional*): instead of `num_frames`, keep one frame per `1 / fps` seconds of the video (the call
            needs `video_fps`). Setting both is an error.
        max_frames (`int`, *optional*): the most frames the model takes (`StormConfig.num_frames`); longer results of
            `fps` / every-frame sampling are sampled down to it, `num_frames > max_frames` is an error.
        fewer_frames (`str`, defaults to `"repeat"`): a video shorter than the frames asked for repeats frames
            (`"repeat"`) or raises `ValueError` (`"error"`).
        do_sample_frames (`bool`, defaults to `True`): False keeps every frame as given.
        do_resize (`bool`, defaults to `True`), size (`dict`, defaults to `{"height": 224, "width": 224}`; an int is a
            square), resample (`int` PIL filter or its name, defaults to bicubic (3)).
        do_rescale (`bool`, defaults to `True`), rescale_factor (`float`, defaults to 1/255): applied to integer
            pixels only (float pixels are taken as [0, 1]).
        do_normalize (`bool`, defaults to `True`), image_mean / image_std (3 floats, default 0.5 each).
        do_convert_rgb (`bool`, defaults to `True`): convert PIL frames of other modes (L, RGBA, P, ...) to RGB.
    """

    model_input_names = ["pixel_values_videos"]
    valid_kwargs = StormVideoProcessorKwargs

    def __init__(self, num_frames: Optional[int] = 8, fps: Optional[float] = None, max_frames: Optional[int] = None,
                 fewer_frames: str = "repeat", do_sample_frames: bool = True, do_resize: bool = True,
                 size: Union[int, Sequence[int], Dict[str, int]] = 224, resample: Union[int, str] = "bicubic",
                 do_rescale: bool = True, rescale_factor: float = 1 / 255, do_normalize: bool = True,
                 image_mean: Union[float, Sequence[float]] = 0.5, image_std: Union[float, Sequence[float]] = 0.5,
                 do_convert_rgb: bool = True, **kwargs):
        kwargs.pop("image_processor_type", None)  # written by to_dict; the class itself says it
        kwargs.pop("video_processor_type", None)
        super().__init__(**kwargs)
        self.num_frames = _check_count("num_frames", num_frames)
        self.fps = _check_fps(fps)
        if self.num_frames is not None and self.fps is not None:
            raise ValueError(f"Give num_frames ({num_frames}) or fps ({fps}), not both (set the other to None).")
        self.max_frames = _check_count("max_frames", max_frames)
        if self.num_frames is not None and self.max_frames is not None and self.num_frames > self.max_frames:
            raise ValueError(f"num_frames={num_frames} is more than max_frames={max_frames}.")
        if fewer_frames not in FEWER_FRAMES_POLICIES:
            raise ValueError(f"fewer_frames must be one of {FEWER_FRAMES_POLICIES}, got {fewer_frames!r}")
        self.fewer_frames = fewer_frames
        self.do_sample_frames = bool(do_sample_frames)
        self.do_resize = bool(do_resize)
        self.size = _size_dict(size)
        self.resample = _resample_id(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = _check_factor(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = _channel_values("image_mean", image_mean)
        self.image_std = _channel_values("image_std", image_std)
        self.do_convert_rgb = bool(do_convert_rgb)

    @classmethod
    def from_config(cls, config, **kwargs) -> "StormVideoProcessor":
        """A processor for a `StormConfig`: frames of `config.image_size`, `num_frames = max_frames =
        config.num_frames`; ``kwargs`` override."""
        image_size = config.image_size
        size = list(image_size) if isinstance(image_size, (list, tuple)) else int(image_size)
        settings = {"size": size, "num_frames": config.num_frames, "max_frames": config.num_frames}
        settings.update(kwargs)
        return cls(**settings)

    def to_dict(self):
        """Every setting (None included, so that a saved `fps` processor reloads as one), the class name and
        `auto_map`."""
        out = super().to_dict()
        out.update({name: getattr(self, name) for name in _SETTINGS})
        return out

    def save_pretrained(self, save_directory, push_to_hub: bool = False, **kwargs):
        """`preprocessor_config.json` (+ this file when registered for an auto class, the default): `auto_map` names
        this class for `AutoImageProcessor`, `AutoVideoProcessor` and `AutoProcessor`."""
        if self._auto_class is not None:
            ref = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
            self.auto_map = {name: ref for name in AUTO_CLASSES}
        return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def sample_frame_indices(self, num_video_frames: int, num_frames: Optional[int] = None, fps: Optional[float] = None,
                             video_fps: Optional[float] = None, video_index: int = 0, **overrides) -> np.ndarray:
        """The frame indices this processor keeps from a video of ``num_video_frames`` frames (a call's
        ``num_frames`` / ``fps`` replace the processor's; ``overrides``: ``max_frames``, ``fewer_frames``,
        ``do_sample_frames``)."""
        num_frames, fps = self._frame_choice(num_frames, fps)
        settings = {name: overrides.pop(name, getattr(self, name))
                    for name in ("max_frames", "fewer_frames", "do_sample_frames")}
        if overrides:
            raise TypeError(f"Unknown arguments {sorted(overrides)}")
        return sample_frame_indices(num_video_frames, num_frames, fps, video_fps, video_index=video_index, **settings)

    def _frame_choice(self, num_frames, fps) -> Tuple[Optional[int], Optional[float]]:
        if num_frames is not None and fps is not None:
            raise ValueError(f"Give num_frames ({num_frames}) or fps ({fps}), not both.")
        if num_frames is not None:
            return _check_count("num_frames", num_frames, allow_none=False), None
        if fps is not None:
            return None, _check_fps(fps)
        return self.num_frames, self.fps

    def __call__(self, videos, **kwargs) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def preprocess(self, videos, num_frames: Optional[int] = None, fps: Optional[float] = None,
                   video_fps: Union[None, float, Sequence[float]] = None, max_frames: Optional[int] = None,
                   fewer_frames: Optional[str] = None, do_sample_frames: Optional[bool] = None,
                   do_resize: Optional[bool] = None, size=None, resample=None, do_rescale: Optional[bool] = None,
                   rescale_factor: Optional[float] = None, do_normalize: Optional[bool] = None, image_mean=None,
                   image_std=None, do_convert_rgb: Optional[bool] = None, return_tensors: Optional[str] = "pt",
                   **kwargs) -> BatchFeature:
        """``videos`` (one or a batch, module docstring) -> `BatchFeature` with ``pixel_values_videos`` (batch, frames,
        3, height, width) float32, a torch tensor (``return_tensors="pt"``, the default) or numpy (``"np"`` / None).
        Arguments left None take the processor's settings; ``video_fps``: the videos' frame rate for ``fps``
        sampling. Videos of one batch must end with the same number of frames."""
        if kwargs:
            raise TypeError(f"StormVideoProcessor got unknown arguments {sorted(kwargs)}")
        num_frames, fps = self._frame_choice(num_frames, fps)

        def pick(value, name):
            return getattr(self, name) if value is None else value

        max_frames = _check_count("max_frames", pick(max_frames, "max_frames"))
        fewer_frames = pick(fewer_frames, "fewer_frames")
        if fewer_frames not in FEWER_FRAMES_POLICIES:
            raise ValueError(f"fewer_frames must be one of {FEWER_FRAMES_POLICIES}, got {fewer_frames!r}")
        do_sample_frames = pick(do_sample_frames, "do_sample_frames")
        do_resize, do_rescale = pick(do_resize, "do_resize"), pick(do_rescale, "do_rescale")
        height, width = _size_dict(pick(size, "size")).values()
        resample = _resample_id(pick(resample, "resample"))
        rescale_factor = _check_factor(pick(rescale_factor, "rescale_factor"))
        do_normalize = pick(do_normalize, "do_normalize")
        mean = np.asarray(_channel_values("image_mean", pick(image_mean, "image_mean")), dtype=np.float32)
        std = np.asarray(_channel_values("image_std", pick(image_std, "image_std")), dtype=np.float32)
        do_convert_rgb = pick(do_convert_rgb, "do_convert_rgb")

        batch = _split_batch(videos)
        if video_fps is None or isinstance(video_fps, (int, float)):
            rates = [video_fps] * len(batch)
        else:
            rates = list(video_fps)
            if len(rates) != len(batch):
                raise ValueError(f"Got {len(rates)} video_fps values for {len(batch)} videos.")
        out = []
        for v, (video, rate) in enumerate(zip(batch, rates)):
            frames = _frames_of(video, v, do_convert_rgb)
            indices = sample_frame_indices(len(frames), num_frames, fps, rate, max_frames, fewer_frames,
                                           do_sample_frames, video_index=v)
            converted = {}
            clip = []
            for i in indices.tolist():
                if i not in converted:  # a repeated frame is processed once
                    x = _to_array(frames[i], v, i)
                    is_int = x.dtype == np.uint8
                    if do_resize:
                        x = _resize(x, height, width, resample)
                    x = x.astype(np.float32)
                    if do_rescale and is_int:
                        x = x * np.float32(rescale_factor)
                    if do_normalize:
                        x = (x - mean) / std
                    converted[i] = np.ascontiguousarray(x.transpose(2, 0, 1))  # (3, H, W)
                clip.append(converted[i])
            out.append(np.stack(clip))  # (T, 3, H, W)
        shapes = [tuple(x.shape) for x in out]
        if len(set(shapes)) > 1:
            detail = ", ".join(f"video {v}: {s[0]} frames of {s[2]}x{s[3]}" for v, s in enumerate(shapes))
            raise ValueError(f"The videos of a batch must end with the same frames and size to stack; got {detail}. "
                             "Use num_frames=... (or process them one at a time) and do_resize=True.")
        pixel_values = np.stack(out)  # (B, T, 3, H, W)
        if return_tensors is None:
            return BatchFeature(data={"pixel_values_videos": pixel_values})
        return BatchFeature(data={"pixel_values_videos": pixel_values}, tensor_type=return_tensors)


__all__ = ["StormVideoProcessor", "sample_frame_indices", "uniform_indices"]

# save_pretrained copies this file and writes auto_map (AutoImageProcessor, AutoVideoProcessor, AutoProcessor), so the
# Auto classes load it with trust_remote_code=True where ssmvl is not installed.
StormVideoProcessor.register_for_auto_class("AutoImageProcessor")
