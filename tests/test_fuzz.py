"""Fuzz tests (hypothesis) over what users hand to ssmvl: configs, processors, converters, forward passes and
save_pretrained. Random sizes, dtypes (uint8 and NaN pixels included), strings, empty inputs, partial / extra /
mis-shaped state dicts must give a correct output or a *clear* error: a ValueError / TypeError / KeyError /
FileExistsError raised by ssmvl's own code (the traceback's last frame is in modeling/, conversion/ or training/)
whose message names the problem (the argument, key or input at fault) -- never an exception from deep inside torch,
and never a half-written output folder or a silently replaced user file.

Deterministic (``derandomize=True``: the same examples every run, no example database), ``deadline=None``. The
default sizes keep this file near a minute on 2 CPU cores; ``SSMVL_FUZZ_EXAMPLES=<n>`` runs n examples per test
instead (e.g. 500 for a long run). The number of examples each test ran is printed at the end (``pytest -s``) and,
with ``SSMVL_FUZZ_REPORT=<path>``, written there as JSON."""

from __future__ import annotations

import json
import math
import os
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ssmvl.modeling.configuration_dual_encoder import SigLipDualEncoderConfig
from ssmvl.modeling.configuration_mamba_lm import MambaLMConfig
from ssmvl.modeling.configuration_ssm_vlm import SsmVlmConfig
from ssmvl.modeling.configuration_storm import StormConfig
from ssmvl.modeling.configuration_vim import VimConfig
from ssmvl.modeling.configuration_vmamba import VMambaConfig
from ssmvl.modeling.modeling_mamba_lm import MambaLMForCausalLM
from ssmvl.modeling.modeling_storm import StormForImageClassification, StormForVideoClassification
from ssmvl.modeling.modeling_vim import VimForImageClassification
from ssmvl.modeling.modeling_vmamba import VMambaForImageClassification

ROOT = Path(__file__).resolve().parent.parent
OUR_CODE = tuple(str(ROOT / d) + os.sep for d in ("modeling", "conversion", "training"))
LONG_RUN = int(os.environ.get("SSMVL_FUZZ_EXAMPLES", "0"))
RUNS: Counter = Counter()  # examples run per test


def fuzz(examples: int):
    """hypothesis settings: ``examples`` per test (SSMVL_FUZZ_EXAMPLES overrides), deterministic, no deadline."""
    return settings(max_examples=LONG_RUN or examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=True)


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(RUNS.values())
    print(f"\n[fuzz] {total} cases: " + ", ".join(f"{name} {n}" for name, n in sorted(RUNS.items())))
    path = os.environ.get("SSMVL_FUZZ_REPORT")
    if path:
        Path(path).write_text(json.dumps({"total": total, "per_test": dict(sorted(RUNS.items()))}, indent=1) + "\n")


def assert_clear(err: BaseException, *names: str):
    """``err`` is a clear error: one of the types users can catch, raised by ssmvl's own code, naming one of
    ``names`` (the arguments / keys / inputs at fault) when given."""
    assert isinstance(err, (ValueError, TypeError, KeyError, FileExistsError)), (
        f"unclear error type {type(err).__name__}: {err}\n" + "".join(traceback.format_exception(err)))
    frame = traceback.extract_tb(err.__traceback__)[-1]
    assert frame.filename.startswith(OUR_CODE), (
        f"{type(err).__name__} raised outside ssmvl ({frame.filename}:{frame.lineno}): {err}\n"
        + "".join(traceback.format_exception(err)))
    if names:
        message = str(err)
        assert any(name in message for name in names), f"the message names none of {names}: {message}"


def outcome(fn, *names):
    """fn() -> (result, None), or (None, err) for a clear error (checked with ``assert_clear``)."""
    try:
        return fn(), None
    except Exception as err:  # noqa: BLE001 - every exception is checked to be a clear one
        assert_clear(err, *names)
        return None, err


# =====================================================================================================================
# configs: random and invalid values -> a valid model, or a clear error at config time naming the argument
# =====================================================================================================================
BAD = st.sampled_from([0, -1, -8, True, 1.5, float("nan"), float("inf"), "3", "abc", None, [], [2], {}, 10**6])
SMALL_INT = st.integers(1, 6)


@st.composite
def kwargs_of(draw, fields: dict):
    """Some of ``fields`` (name -> strategy of values), then none, one or two of them replaced by an invalid value."""
    kwargs = draw(st.fixed_dictionaries({}, optional=fields))
    n_bad = draw(st.sampled_from([0, 0, 1, 1, 2]))
    for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=n_bad, max_size=n_bad, unique=True)):
        kwargs[name] = draw(BAD)
    return kwargs


def _names(kwargs: dict):
    """The argument names an error about ``kwargs`` may name: its keys and those of nested config dicts."""
    nested = [k for v in kwargs.values() if isinstance(v, dict) for k in v]
    return [*kwargs, *nested]


def _check_config(cls, kwargs, build_and_run):
    """Config from ``kwargs`` (some values invalid): a clear ValueError / TypeError naming an argument at config time,
    or a config that serialises, reloads and (when small) builds a model whose forward gives finite outputs."""
    config, err = outcome(lambda: cls(**kwargs), *_names(kwargs))
    if err is not None:
        return "error"
    again = cls.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    small = all(not isinstance(v, int) or isinstance(v, bool) or v <= 64 for v in kwargs.values())
    if small:
        torch.manual_seed(0)
        out = build_and_run(config)  # a config the class accepted must build and run: no error allowed here
        assert torch.isfinite(out).all(), f"non-finite outputs for {kwargs}"
    return "valid"


@fuzz(100)
@given(kwargs_of({
    "image_size": st.sampled_from([8, 16, 24]), "patch_size": st.sampled_from([4, 8]),
    "num_channels": st.sampled_from([1, 3]), "hidden_size": st.sampled_from([8, 16]),
    "num_hidden_layers": st.integers(1, 2), "state_size": SMALL_INT,
    "expand": st.integers(1, 3), "intermediate_size": st.integers(1, 24),
    "conv_kernel": st.integers(1, 5), "time_step_rank": st.just("auto") | SMALL_INT,
    "layer_norm_epsilon": st.sampled_from([1e-5, 1e-6]),
    "final_pool_type": st.sampled_from(["cls", "mean", "last", "max"]),
    "use_cls_token": st.booleans(), "use_middle_cls_token": st.booleans(), "if_abs_pos_embed": st.booleans(),
    "bimamba": st.booleans(), "rms_norm": st.booleans(),
    "drop_path_rate": st.sampled_from([0.0, 0.1]),
    "time_step_min": st.sampled_from([1e-3, 0.5]), "time_step_max": st.just(0.1),
}))
def test_vim_config(kwargs):
    kwargs = {"image_size": 16, "patch_size": 8, "hidden_size": 8, "num_hidden_layers": 1, "state_size": 2,
              "num_labels": 3, **kwargs}

    def run(config):
        model = VimForImageClassification(config).eval()
        x = torch.randn(2, config.num_channels, config.image_size, config.image_size)
        with torch.no_grad():
            logits = model(x).logits
        assert logits.shape == (2, 3)
        return logits

    RUNS["config_vim/" + _check_config(VimConfig, kwargs, run)] += 1


@fuzz(100)
@given(kwargs_of({
    "vocab_size": st.integers(1, 40), "hidden_size": st.sampled_from([4, 8, 16]),
    "num_hidden_layers": st.integers(1, 2), "state_size": SMALL_INT,
    "expand": st.integers(1, 3), "intermediate_size": st.integers(1, 24),
    "conv_kernel": st.integers(1, 5), "time_step_rank": st.just("auto") | SMALL_INT,
    "layer_norm_epsilon": st.sampled_from([1e-5, 1e-6]), "hidden_act": st.just("silu"),
    "chunked_prefill_size": st.sampled_from([1, 4, 1024]),
    "time_step_min": st.sampled_from([1e-3, 0.5]), "time_step_max": st.just(0.1),
    "pad_token_id": st.sampled_from([0, 1, None]), "use_cache": st.booleans(),
}))
def test_mamba_lm_config(kwargs):
    kwargs = {"vocab_size": 16, "hidden_size": 8, "num_hidden_layers": 1, "state_size": 2, **kwargs}

    def run(config):
        model = MambaLMForCausalLM(config).eval()
        ids = torch.randint(0, config.vocab_size, (2, 5))
        with torch.no_grad():
            logits = model(ids).logits
        assert logits.shape == (2, 5, config.vocab_size)
        return logits

    RUNS["config_mamba_lm/" + _check_config(MambaLMConfig, kwargs, run)] += 1


@fuzz(60)
@given(kwargs_of({
    "image_size": st.sampled_from([16, 32]), "patch_size": st.sampled_from([2, 4]),
    "embed_dim": st.sampled_from([4, 8]), "depths": st.one_of(st.lists(st.integers(1, 2), max_size=3),
                                                                          st.lists(BAD, min_size=1, max_size=2)),
    "d_state": SMALL_INT, "ssm_ratio": st.sampled_from([1.0, 2.0, 0.01]),
    "ssm_conv": st.sampled_from([1, 3, 4]), "mlp_ratio": st.sampled_from([0.0, 2.0]),
    "forward_type": st.sampled_from(["v05_noz", "v2", "xyz"]),
    "downsample": st.sampled_from(["v1", "v3", "v9"]), "patchembed": st.sampled_from(["v1", "v2"]),
    "norm_layer": st.sampled_from(["ln", "ln2d", "bn"]), "drop_path_rate": st.just(0.0),
    "out_indices": st.one_of(st.none(), st.lists(st.integers(-3, 4), max_size=3)),
}))
def test_vmamba_config(kwargs):
    kwargs = {"image_size": 16, "patch_size": 4, "patchembed": "v1", "embed_dim": 4, "depths": [1, 1], "d_state": 2,
              "num_labels": 3, "drop_path_rate": 0.0, **kwargs}

    def run(config):
        model = VMambaForImageClassification(config).eval()
        x = torch.randn(1, config.num_channels, config.image_size, config.image_size)
        with torch.no_grad():
            logits = model(x).logits
        assert logits.shape == (1, 3)
        return logits

    RUNS["config_vmamba/" + _check_config(VMambaConfig, kwargs, run)] += 1


@fuzz(60)
@given(kwargs_of({
    "image_size": st.sampled_from([8, 16]), "patch_size": st.sampled_from([4, 8]),
    "hidden_size": st.sampled_from([8, 16]), "num_hidden_layers": st.integers(1, 3),
    "keep_ratios": st.one_of(st.none(), st.lists(st.sampled_from([1.0, 0.5, 0.25, 0.0, 1.5, float("nan")]),
                                                 min_size=1, max_size=3), BAD),
    "num_memory_tokens": st.integers(0, 3), "state_size": SMALL_INT,
    "frame_layers": st.integers(0, 2), "temporal_layers": st.integers(0, 2),
    "num_frames": st.integers(1, 4), "temporal_pool": st.integers(1, 3),
    "retention_gate": st.sampled_from(["straight_through", "soft", "hard"]),
    "conv_kernel": st.integers(1, 5), "layer_norm_epsilon": st.just(1e-5),
}))
def test_storm_config(kwargs):
    kwargs = {"image_size": 8, "patch_size": 4, "hidden_size": 8, "num_hidden_layers": 1, "state_size": 2,
              "num_frames": 2, "num_labels": 3, **kwargs}

    def run(config):
        model = StormForVideoClassification(config).eval()
        x = torch.randn(2, config.num_frames, config.num_channels, config.image_size, config.image_size)
        with torch.no_grad():
            logits = model(x).logits
        assert logits.shape == (2, 3)
        return logits

    RUNS["config_storm/" + _check_config(StormConfig, kwargs, run)] += 1


TINY_VIM = dict(model_type="ssmvl_vim", image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=1, state_size=2)
TINY_MAMBA = dict(model_type="ssmvl_mamba", vocab_size=16, hidden_size=8, num_hidden_layers=1, state_size=2)


@fuzz(60)
@given(kwargs_of({
    "projection_dim": st.sampled_from([4, 8]),
    "loss_type": st.sampled_from(["sigmoid", "softmax", "clip", "hinge"]),
    "logit_scale_init": st.sampled_from([0.0, 2.3]), "logit_bias_init": st.just(-10.0),
    "text_pooling": st.one_of(st.none(), st.sampled_from(["last", "mean", "first", "cls", "max"]), BAD),
    "vision_pooling": st.sampled_from(["pooler", "mean", "cls", "max"]),
    "vision_config": st.sampled_from([TINY_VIM, {"model_type": "nope"}, {"hidden_size": 8}, None, 3]),
    "text_config": st.sampled_from([TINY_MAMBA, {"model_type": "nope"}, None, "mamba"]),
}))
def test_dual_encoder_config(kwargs):
    from ssmvl.modeling.modeling_dual_encoder import SigLipDualEncoderModel

    kwargs = {"vision_config": TINY_VIM, "text_config": TINY_MAMBA, "projection_dim": 4, **kwargs}

    def run(config):
        if kwargs["vision_config"] is None or kwargs["text_config"] is None:  # a default-size tower: config only
            return torch.zeros(1)
        model = SigLipDualEncoderModel(config).eval()
        ids, px = torch.randint(1, 16, (2, 4)), torch.randn(2, 3, 16, 16)
        with torch.no_grad():
            out = model(input_ids=ids, pixel_values=px, return_loss=True)
        assert out.logits_per_image.shape == (2, 2)
        return torch.cat([out.logits_per_image.flatten(), out.loss.reshape(1)])

    RUNS["config_dual_encoder/" + _check_config(SigLipDualEncoderConfig, kwargs, run)] += 1


@fuzz(60)
@given(kwargs_of({
    "projector_type": st.sampled_from(["mlp", "resampler", "ssm_bridge", "bridger_ffn", "patch_linear",
                                                  "linear"]),
    "fusion": st.sampled_from(["prefix", "cross_attention", "concat"]),
    "image_token_id": st.one_of(st.sampled_from([3, 15, 16, -1, None]), BAD),
    "vision_feature_layer": st.sampled_from([-1, -2, 0, 5]),
    "vision_feature_select_strategy": st.sampled_from(["default", "full", "cls"]),
    "projector_config": st.sampled_from([None, {}, {"num_queries": 2, "num_heads": 2}, {"bogus": 1},
                                         {"hidden_size": 8, "num_layers": 1, "state_size": 2}]),
    "vision_config": st.sampled_from([TINY_VIM, {"model_type": "nope"}, None]),
    "text_config": st.sampled_from([TINY_MAMBA, None, {"model_type": "ssmvl_mamba", "vocab_size": 0}]),
}))
def test_vlm_config(kwargs):
    from ssmvl.modeling.modeling_ssm_vlm import SsmVlmForConditionalGeneration

    kwargs = {"vision_config": TINY_VIM, "text_config": TINY_MAMBA, "image_token_id": 3, **kwargs}
    if kwargs.get("projector_type") == "patch_linear":
        kwargs.update(image_size=16, patch_size=8)
    big = kwargs["text_config"] is None or (kwargs["vision_config"] is None
                                             and kwargs.get("projector_type") != "patch_linear")

    def run(config):
        if big:  # a default-size tower / decoder: only check that the config was usable
            return torch.zeros(1)
        model = SsmVlmForConditionalGeneration(config).eval()
        token = config.image_token_id
        n = config.num_image_tokens if config.uses_image_placeholders and token is not None else 0
        ids = torch.cat([torch.tensor([[5, 6]]), torch.full((1, n), 0 if token is None else token),
                         torch.tensor([[7]])], 1)

        def forward():
            with torch.no_grad():
                return model(input_ids=ids, pixel_values=torch.randn(1, 3, 16, 16)).logits

        if token is None or token >= config.text_config.vocab_size:  # the config cannot know the tokenizer's ids
            logits, err = outcome(forward, "image_token_id", "input_ids")
            assert err is not None
            return torch.zeros(1)
        logits = forward()
        assert logits.shape[:2] == ids.shape
        return logits

    RUNS["config_vlm/" + _check_config(SsmVlmConfig, kwargs, run)] += 1


# =====================================================================================================================
# forward passes: random batch / image / sequence sizes, dtypes (uint8, integer, bool, half, NaN pixels), shapes
# =====================================================================================================================
_MODELS = {}


def tiny(name):
    """One tiny model per family, built once (eval mode, seeded)."""
    if name not in _MODELS:
        torch.manual_seed(0)
        vision = dict(image_size=16, num_labels=3)
        _MODELS[name] = {
            "vim": lambda: VimForImageClassification(VimConfig(patch_size=4, hidden_size=8, num_hidden_layers=1,
                                                               state_size=2, **vision)),
            "vmamba": lambda: VMambaForImageClassification(VMambaConfig(patch_size=4, patchembed="v1", embed_dim=4,
                                                                        depths=[1, 1], d_state=2, drop_path_rate=0.0,
                                                                        **vision)),
            "storm_image": lambda: StormForImageClassification(StormConfig(
                patch_size=4, hidden_size=8, num_hidden_layers=2, keep_ratios=[1.0, 0.5], num_memory_tokens=2,
                state_size=2, frame_layers=1, temporal_layers=1, num_frames=3, **vision)),
            "storm_video": lambda: StormForVideoClassification(StormConfig(
                patch_size=4, hidden_size=8, num_hidden_layers=2, keep_ratios=[1.0, 0.5], num_memory_tokens=2,
                state_size=2, frame_layers=1, temporal_layers=1, num_frames=3, temporal_pool=2, **vision)),
            "mamba_lm": lambda: MambaLMForCausalLM(MambaLMConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1,
                                                                 state_size=2)),
        }[name]().eval()
    return _MODELS[name]


FLOATS = st.sampled_from([torch.float32, torch.float32, torch.float64, torch.bfloat16, torch.float16])
BAD_PIXELS = ("batch", "frames", "channels", "side", "dims", "dtype", "nan")


@st.composite
def pixels(draw, video=False):
    """Pixels for the tiny vision models (16 px, patch 4, 3 channels, <= 3 frames): valid ones (random batch 0-3,
    frames, sides 8 / 16 / 32, float dtypes) or, about half the time, with one thing wrong (channels 1 / 4, a side
    that is not a multiple of the patch or 0, no frames, a missing or extra dimension, uint8 / int64 / bool, NaN /
    inf)."""
    wrong = draw(st.sampled_from((None,) * len(BAD_PIXELS) + BAD_PIXELS))
    batch = draw(st.integers(0, 3))
    frames = (draw(st.integers(0, 5) if wrong == "frames" else st.integers(1, 3)),) if video else ()
    channels = draw(st.sampled_from([1, 4])) if wrong == "channels" else 3
    sides = [0, 6, 13, 17] if wrong == "side" else [8, 16, 16, 32]
    height, width = draw(st.sampled_from(sides)), draw(st.sampled_from([16, 8, 32] if wrong != "side" else sides))
    shape = (batch, *frames, channels, height, width)
    if wrong == "dims":
        shape = shape[1:] if draw(st.booleans()) else (1, *shape)
    dtype = draw(st.sampled_from([torch.uint8, torch.int64, torch.bool])) if wrong == "dtype" else draw(FLOATS)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 9))))
    x = (x * 255).to(dtype) if not dtype.is_floating_point else x.to(dtype)
    if wrong == "nan" and x.numel():
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
    return x


def _check_vision_forward(name, x, interpolate, video=False):
    model = tiny(name)
    kwargs = {"interpolate_pos_encoding": interpolate} if name != "vmamba" else {}

    def forward():
        with torch.no_grad():
            return model(x, **kwargs).logits

    logits, err = outcome(forward, "pixel_values", "interpolate_pos_encoding", "image", "video", "frame", "size",
                          "channels", "batch")
    if err is not None:
        return "error"
    assert x.dtype.is_floating_point, f"{name} accepted {x.dtype} pixels"
    assert torch.isfinite(x).all(), f"{name} accepted non-finite pixels"
    assert logits.shape == (x.shape[0], 3) and torch.isfinite(logits).all(), (name, tuple(x.shape), logits)
    return "output"


@fuzz(150)
@given(pixels(), st.sampled_from(["vim", "vmamba", "storm_image"]), st.booleans())
def test_image_forward(x, name, interpolate):
    RUNS[f"forward_{name}/" + _check_vision_forward(name, x, interpolate)] += 1


@fuzz(50)
@given(pixels(video=True), st.booleans())
def test_video_forward(x, interpolate):
    RUNS["forward_storm_video/" + _check_vision_forward("storm_video", x, interpolate, video=True)] += 1


@fuzz(150)
@given(st.data())
def test_language_model_forward(data):
    model = tiny("mamba_lm")
    shape = data.draw(st.sampled_from([(2, 5), (1, 1), (3, 7), (2, 0), (0, 4), (5,), (1, 2, 3), (1, 70)]))
    dtype = data.draw(st.sampled_from([torch.long, torch.long, torch.int32, torch.float32, torch.bool]))
    high = data.draw(st.sampled_from([16, 16, 17, 100]))
    low = data.draw(st.sampled_from([0, 0, 0, -1]))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    ids = torch.randint(low, high, shape, generator=gen).to(dtype)
    kwargs = {}
    mask = data.draw(st.sampled_from([None, "ok", "short", "float", "left_pad"]))
    if mask is not None and ids.dim() == 2:
        m = torch.ones(ids.shape[0], max(0, ids.shape[1] - (mask == "short")), dtype=torch.long)
        if mask == "left_pad" and ids.shape[1] > 1:
            m[:, 0] = 0
        kwargs["attention_mask"] = m.float() if mask == "float" else m
    if data.draw(st.booleans()) and ids.dim() == 2:
        labels = torch.randint(0, 16, ids.shape, generator=gen)
        labels[labels == 0] = data.draw(st.sampled_from([-100, -1, 16, 3]))  # -1: not -100, not a class; 16: too high
        kwargs["labels"] = labels
    kwargs["use_cache"] = data.draw(st.booleans())

    def forward():
        with torch.no_grad():
            return model(ids, **kwargs)

    out, err = outcome(forward, "input_ids", "attention_mask", "labels", "vocabulary", "token")
    if err is None:
        assert out.logits.shape == (*ids.shape, 16) and torch.isfinite(out.logits).all()
        if "labels" in kwargs:
            assert torch.isfinite(out.loss)
    RUNS["forward_mamba_lm/" + ("error" if err is not None else "output")] += 1


# =====================================================================================================================
# processors: the STORM video processor and the VLM processor
# =====================================================================================================================
VIDEO_FAULTS = ("kind", "frames", "size", "channels", "dtype", "nan", "mixed", "layout")


@st.composite
def videos(draw):
    """One video or a batch, as the processor takes them (PIL frame lists in any mode, numpy channels-last, torch
    channels-first, lists of arrays, batches), valid or, about half the time, with one fault: not a video at all
    (empty list, one image, a path, None), no frames, 0-sized frames, 1 / 4 channels, uint16 above 255 / bool pixels,
    NaN / inf pixels, frames of two sizes, torch channels-last."""
    from PIL import Image

    wrong = draw(st.sampled_from((None,) * len(VIDEO_FAULTS) + VIDEO_FAULTS))
    kind = draw(st.sampled_from(["pil", "numpy", "torch", "numpy_batch", "list_of_arrays"]))
    frames = 0 if wrong == "frames" else draw(st.integers(1, 5))
    height, width = (0, draw(st.sampled_from([0, 5]))) if wrong == "size" else (draw(st.integers(1, 16)),
                                                                                 draw(st.integers(1, 16)))
    channels = draw(st.sampled_from([1, 4])) if wrong == "channels" else 3
    dtype = draw(st.sampled_from(["uint16", "bool"]) if wrong == "dtype" else
                 st.sampled_from(["uint8", "uint8", "float32", "float64", "float16", "int64"]))
    rng = np.random.default_rng(draw(st.integers(0, 9)))
    scale = {"uint8": 255, "int64": 255, "uint16": 1000}.get(dtype, 1)
    array = (rng.random((frames, height, width, channels)) * scale).astype(dtype)
    if wrong == "nan":
        array = array.astype(np.float32)
        if array.size:
            array.flat[draw(st.integers(0, array.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    if wrong == "kind":
        return draw(st.sampled_from([[], [[]], np.zeros((0, 4, 4, 3), np.uint8), Image.new("RGB", (8, 8)), None,
                                     "video.mp4", 3, {"frames": array}]))
    if kind == "pil":
        mode = draw(st.sampled_from(["RGB", "RGB", "L", "RGBA", "P", "I", "F", "1"]))
        size = (max(width, 1), max(height, 1))
        video = [Image.new("RGB", size, (10 * i, 20, 30)).convert(mode) for i in range(frames)]
        if wrong == "mixed" and frames > 1:
            video[1] = Image.new(mode, (size[0] + 1, size[1]))
        return video
    if kind == "numpy":
        return array
    if kind == "torch":
        video = torch.from_numpy(array.astype(np.float32) / (255 if scale == 255 else 1))
        return video if wrong == "layout" else video.permute(0, 3, 1, 2)
    if kind == "numpy_batch":
        return [array, array[: max(1, frames - 1)]]
    frame_list = list(array)
    if wrong == "mixed" and frames > 1:
        frame_list[1] = np.zeros((height + 1, width, channels), dtype=array.dtype)
    return frame_list


@fuzz(200)
@given(videos(), st.sampled_from([{}, {"num_frames": 2}, {"num_frames": 0}, {"fps": 1.0, "video_fps": 4.0},
                                  {"fps": 2.0}, {"do_sample_frames": False}, {"size": 0}, {"size": (8, 6)},
                                  {"image_mean": [0.5, 0.5]}, {"rescale_factor": "x"}, {"resample": None},
                                  {"fewer_frames": "error"}, {"max_frames": 2}, {"return_tensors": None}]))
def test_video_processor(video, call_kwargs):
    from ssmvl.modeling.video_processing_storm import StormVideoProcessor

    processor = StormVideoProcessor(num_frames=3, size=8)
    out, err = outcome(lambda: processor(video, **call_kwargs), "Video", "video", "frame", "num_frames", "fps",
                       "size", "image_mean", "rescale_factor", "resample", "fewer_frames", "max_frames",
                       "channel", "pixels", "list", "image")
    if err is None:
        pv = out["pixel_values_videos"]
        pv = torch.as_tensor(pv)
        assert pv.dim() == 5 and pv.shape[2] == 3 and pv.dtype == torch.float32
        assert torch.isfinite(pv).all(), "the processor let NaN / inf pixels through"
    RUNS["video_processor/" + ("error" if err is not None else "output")] += 1


_VLM_PROCESSOR = {}


def vlm_processor(num_image_tokens):
    if num_image_tokens not in _VLM_PROCESSOR:
        from ssmvl.modeling.processing_ssm_vlm import SsmVlmProcessor
        from ssmvl.training.shapes import build_shapes_tokenizer
        from ssmvl.training.vlm import shapes_image_processor

        _VLM_PROCESSOR[num_image_tokens] = SsmVlmProcessor(shapes_image_processor(16), build_shapes_tokenizer(),
                                                           num_image_tokens=num_image_tokens)
    return _VLM_PROCESSOR[num_image_tokens]


TEXT = st.one_of(st.sampled_from(["", " ", "<image>", "<image> what color is the circle?", "a red circle <image>",
                                  "<image><image> two", "<image> <image>", "<imag>", "<IMAGE>", "ünïcödé ☃ 🐍 <image>",
                                  "\x00\n\t<image>", "<image>" * 5]),
                 st.text(max_size=30))


@st.composite
def vlm_images(draw):
    from PIL import Image

    n = draw(st.integers(0, 3))
    kind = draw(st.sampled_from(["pil", "pil", "numpy", "nested", "none", "tensor_nan"]))
    if kind == "none":
        return None
    side = draw(st.sampled_from([16, 1, 33]))
    if kind == "numpy":
        return [np.full((side, side, 3), 200, dtype=draw(st.sampled_from([np.uint8, np.float32]))) for _ in range(n)]
    if kind == "tensor_nan":
        x = torch.rand(3, side, side)
        x[0, 0, 0] = float("nan")
        return [x] * n
    images = [Image.new(draw(st.sampled_from(["RGB", "L", "RGBA"])), (side, side)) for _ in range(n)]
    return [images[:1], images[1:]] if kind == "nested" else images


@fuzz(200)
@given(st.one_of(TEXT, st.lists(TEXT, min_size=0, max_size=3), st.just(None), st.just(3)), vlm_images(),
       st.sampled_from([4, 0]))
def test_vlm_processor(text, images, num_image_tokens):
    processor = vlm_processor(num_image_tokens)
    out, err = outcome(lambda: processor(images=images, text=text, padding=True), "image", "<image>", "text",
                       "placeholder", "SsmVlmProcessor", "NaN", "pixel")
    if err is None and text is not None:
        texts = [text] if isinstance(text, str) else text
        ids = out["input_ids"]
        assert len(ids) == len(texts)
        if num_image_tokens:
            n_images = 0 if images is None else sum(len(g) if isinstance(g, list) else 1 for g in images)
            assert int((ids == processor.image_token_id).sum()) == n_images * num_image_tokens
    if err is None and "pixel_values" in out:
        assert torch.isfinite(out["pixel_values"]).all(), "the processor let NaN pixels through"
    RUNS["vlm_processor/" + ("error" if err is not None else "output")] += 1


# =====================================================================================================================
# converters: partial, extra, mis-shaped and non-tensor state dicts -> a clear error naming the keys; a failed
# conversion leaves no output folder (and no staging folder) behind
# =====================================================================================================================
_ORIGINALS = {}


def original_state_dict(name):
    """(config, a valid original-layout state dict, convert_state_dict) of a tiny model of each converter."""
    if name in _ORIGINALS:
        return _ORIGINALS[name]
    torch.manual_seed(0)
    if name == "vim":
        from ssmvl.conversion import convert_vim_to_hf as conv

        config = VimConfig(image_size=16, patch_size=8, hidden_size=8, num_hidden_layers=2, state_size=2, num_labels=3)
        sd = {conv.hf_key_to_original(k): v for k, v in VimForImageClassification(config).state_dict().items()}
        convert = conv.convert_state_dict
    elif name == "mamba":
        from ssmvl.conversion import convert_mamba_to_hf as conv

        config = MambaLMConfig(vocab_size=16, hidden_size=8, num_hidden_layers=2, state_size=2)
        sd = {conv.EMBED_ORIGINAL if k == conv.EMBED else k: v
              for k, v in MambaLMForCausalLM(config).state_dict().items() if k != conv.LM_HEAD}
        convert = conv.convert_state_dict
    elif name == "vmamba":
        from ssmvl.conversion import convert_vmamba_to_hf as conv
        from test_vmamba import official_state_dict  # the upstream layout, written from upstream's modules

        config = VMambaConfig(image_size=32, embed_dim=8, depths=[1, 1], d_state=2, num_labels=3, drop_path_rate=0.0)
        sd = official_state_dict(config)
        convert = conv.convert_state_dict
    else:  # ssm_bridge: upstream EnhancedVLM keys
        from ssmvl.conversion import convert_ssm_bridge_to_hf as conv

        config = conv.config_from_enhanced_vlm(dict(
            img_size=16, patch_size=8, vision_embed_dim=8, vision_num_layers=1, vision_num_heads=2, vocab_size=11,
            text_embed_dim=8, text_num_layers=1, text_num_heads=2, text_kv_heads=1, max_seq_length=8,
            ssm_state_dim=2, ssm_hidden_dim=8, ssm_num_layers=1, cross_attn_layers=1, cross_attn_heads=2), target="parts")
        prefixes = conv.prefixes_for(config)
        sd = {conv.hf_key_to_original(k, prefixes): v for k, v in conv.build_model(config).state_dict().items()}
        convert = conv.convert_state_dict
    convert(sd, config)  # the untouched dict converts
    _ORIGINALS[name] = (config, sd, convert)
    return _ORIGINALS[name]


MUTATIONS = ("drop", "extra", "reshape", "transpose", "not_a_tensor", "dtype", "rename")


def key_names(name, key):
    """The names a converter's message may use for an original ``key``: the original one, or ours."""
    config = original_state_dict(name)[0]
    if name == "vim":
        return [key, "vim." + key]
    if name == "mamba":
        from ssmvl.conversion import convert_mamba_to_hf as conv

        return [key, conv.EMBED if key == conv.EMBED_ORIGINAL else key]
    if name == "vmamba":
        from ssmvl.conversion import convert_vmamba_to_hf as conv

        return [key, conv.map_key(conv._legacy_rename(key), config) or key]
    from ssmvl.conversion import convert_ssm_bridge_to_hf as conv

    return [key, conv.original_key_to_hf(key, conv.prefixes_for(config)) or key]


@st.composite
def mutated_state_dict(draw, name):
    """(state dict, the keys a message may name, whether it must fail): 1-3 random mutations of a valid one."""
    config, original, _ = original_state_dict(name)
    sd = dict(original)
    keys, named = sorted(sd), []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(MUTATIONS))
        key = draw(st.sampled_from(keys))
        if not isinstance(sd.get(key), torch.Tensor):  # dropped or replaced by an earlier mutation
            continue
        if kind == "drop":
            del sd[key]
        elif kind == "extra":
            key = draw(st.sampled_from(["extra.weight", "layers.7.mixer.A_log", "head.extra", key + ".copy",
                                        "model.weight", "ünïcode.weight"]))
            sd[key] = torch.zeros(draw(st.sampled_from([(2,), (3, 3)])))
        elif kind == "rename":
            new = key.replace(".", "_", 1) if "." in key else key + "_x"
            sd[new] = sd.pop(key)
            named.append(new)
        elif kind == "reshape":
            sd[key] = torch.zeros(*sd[key].shape, 2) if draw(st.booleans()) else sd[key].reshape(-1)[:1].clone()
            if sd[key].shape == original[key].shape:
                continue
        elif kind == "transpose":
            if sd[key].dim() < 2 or sd[key].shape[0] == sd[key].shape[-1]:
                continue
            sd[key] = sd[key].transpose(0, -1)
        elif kind == "not_a_tensor":
            sd[key] = draw(st.sampled_from([None, 3, [1.0, 2.0], "weights", np.zeros(2)]))
        else:  # another dtype: converts (load_state_dict casts), so not a failure by itself
            sd[key] = sd[key].to(draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float64])))
            continue
        named.extend(key_names(name, key))
    must_fail = sd.keys() != original.keys() or any(
        not isinstance(v, torch.Tensor) or v.shape != original[k].shape for k, v in sd.items())
    return sd, named, must_fail


@fuzz(80)
@given(st.sampled_from(["vim", "mamba", "vmamba", "ssm_bridge"]).flatmap(
    lambda name: st.tuples(st.just(name), mutated_state_dict(name))))
def test_converters_name_the_keys(case):
    name, (sd, named, must_fail) = case
    config, original, convert = original_state_dict(name)
    before = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in sd.items()}
    converted, err = outcome(lambda: convert(sd, config), *[n for n in named if n])
    if must_fail:
        assert err is not None, f"{name}: converted a broken state dict (changed keys {named})"
    else:
        assert err is None
    for k, v in before.items():  # pure: the input is left as it was
        assert (torch.equal(sd[k], v) if isinstance(v, torch.Tensor) else sd[k] is v), k
    RUNS[f"converter_{name}/" + ("error" if err is not None else "converted")] += 1


@fuzz(20)
@given(mutated_state_dict("vim"), st.sampled_from(["new", "user_files", "user_files_overwrite"]))
def test_failed_conversion_leaves_no_output(case, out_state):
    """The whole Vim converter (file in, folder out): a broken checkpoint fails before anything is written, and an
    existing folder with user files is refused (or, with overwrite, kept as it was when the conversion fails)."""
    import tempfile

    from safetensors.torch import save_file

    from ssmvl.conversion import convert_vim_to_hf as conv

    sd, named, must_fail = case
    config, _, _ = original_state_dict("vim")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tensors = {k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}
        save_file(tensors, str(tmp / "ckpt.safetensors"))
        variant = tmp / "tiny.json"
        variant.write_text(json.dumps({k: v for k, v in config.to_dict().items()
                                       if k in ("image_size", "patch_size", "hidden_size", "num_hidden_layers",
                                                "state_size")}))
        out = tmp / "out"
        if out_state != "new":
            out.mkdir()
            (out / "notes.txt").write_text("mine")
            (out / "config.json").write_text("{\"mine\": true}")
        original = original_state_dict("vim")[1]
        broken = tensors.keys() != original.keys() or any(v.shape != original[k].shape for k, v in tensors.items())
        _, err = outcome(lambda: conv.convert(str(tmp / "ckpt.safetensors"), str(variant), str(out),
                                               overwrite=out_state == "user_files_overwrite"),
                         "out", "Output folder", "overwrite", *[n for n in named if n], "Checkpoint", "checkpoint")
        leftovers = [p.name for p in tmp.iterdir() if ".converting-" in p.name]
        assert not leftovers, f"staging folders left behind: {leftovers}"
        if out_state == "user_files":
            assert err is not None, "wrote into a folder with user files without overwrite"
        if err is not None and out_state != "new":  # the user's files are as they were
            assert (out / "notes.txt").read_text() == "mine" and json.loads((out / "config.json").read_text())
        if err is not None and out_state == "new":
            assert not out.exists(), "a failed conversion left an output folder"
        if err is None:
            assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
            assert not (out / "notes.txt").exists()  # overwrite=True replaced the folder, as documented
        if broken and out_state != "user_files":
            assert err is not None
    RUNS["converter_vim_folder/" + ("error" if err is not None else "converted")] += 1


# =====================================================================================================================
# save_pretrained into a folder that already holds the user's files: what the save does not write is kept as it was,
# and a file it replaces (or removes) is named in a warning, never replaced silently
# =====================================================================================================================
USER_FILES = ["notes.txt", "README.md", "config.json", "model.safetensors", "modeling_vim.py", "ssm_ops.py",
              "generation_config.json", "train.log", "model-00001-of-00002.safetensors", "data.csv", "ünïcode.txt",
              ".hidden", "preprocessor_config.json"]


@fuzz(40)
@given(st.sampled_from(["vim", "mamba_lm", "storm_image"]),
       st.lists(st.sampled_from(USER_FILES), min_size=1, max_size=5, unique=True),
       st.booleans())
def test_save_pretrained_never_replaces_user_files_silently(name, user_files, saved_before):
    import logging
    import tempfile

    model = tiny(name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        if saved_before:  # a model saved here earlier, then the user's files next to it
            model.save_pretrained(folder)
        folder.mkdir(exist_ok=True)
        for i, file in enumerate(user_files):
            (folder / file).write_bytes(f"user file {i}".encode())
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        loggers = [logging.getLogger(n) for n in ("ssmvl", "transformers_modules", "")]
        for lg in loggers:
            lg.addHandler(handler)
        try:
            model.save_pretrained(folder)
        finally:
            for lg in loggers:
                lg.removeHandler(handler)
        warned = " ".join(r.getMessage() for r in records if r.levelno >= logging.WARNING)
        for i, file in enumerate(user_files):
            path = folder / file
            kept = path.is_file() and path.read_bytes() == f"user file {i}".encode()
            assert kept or file in warned, f"{name}: save_pretrained replaced the user's {file} without a warning"
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    RUNS[f"save_pretrained_{name}"] += 1
