"""Processor of the ssmvl VLM: an image processor and a tokenizer, with each ``<image>`` placeholder of the text
expanded to the number of image tokens the model puts there. Self-contained (no sibling imports) so that
``AutoProcessor.from_pretrained(folder, trust_remote_code=True)`` works without ssmvl installed."""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin


class SsmVlmProcessor(ProcessorMixin):
    r"""
    Prepares text and images for [`SsmVlmForConditionalGeneration`] (LLaVA's convention, written for ssmvl).

    Args:
        image_processor: any transformers image processor (`AutoImageProcessor`); it must resize to the model's
            `config.image_size`.
        tokenizer: any transformers tokenizer (`AutoTokenizer`) that holds the image token as one (special) token.
        num_image_tokens (`int`, *optional*): tokens each `<image>` expands to: the model's `config.num_image_tokens`
            when the text holds placeholders (`config.uses_image_placeholders`), else 0 (cross-attention fusion
            without an image prefix: placeholders are dropped from the text and each text needs exactly one image).
            [`SsmVlmProcessor.from_config`] reads it from the model config.
        image_token (`str`, *optional*): the placeholder; else the tokenizer's `image_token`, else `"<image>"`
            ([`SsmVlmProcessor.from_config`] passes the model's: `"<video>"` for a video tower).
        chat_template (`str`, *optional*): Jinja chat template; defaults to the tokenizer's. `apply_chat_template`
            (from `ProcessorMixin`) renders conversations with `{"type": "image"}` content parts.
    """

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens: Optional[int] = None,
                 image_token: Optional[str] = None, chat_template: Optional[str] = None, **kwargs):
        if tokenizer is None or image_processor is None:
            raise ValueError("SsmVlmProcessor needs an image_processor and a tokenizer.")
        self.image_token = image_token or getattr(tokenizer, "image_token", None) or "<image>"
        self.num_image_tokens = num_image_tokens
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None)
        super().__init__(image_processor, tokenizer, chat_template=chat_template)
        if num_image_tokens:
            self.image_token_id  # noqa: B018  (checks now that the tokenizer knows the placeholder)

    @classmethod
    def from_config(cls, config, image_processor, tokenizer, **kwargs) -> "SsmVlmProcessor":
        """A processor matching an `SsmVlmConfig`: its `num_image_tokens` (0 without placeholders) and `image_token`."""
        uses = getattr(config, "uses_image_placeholders", True)
        return cls(image_processor, tokenizer, num_image_tokens=config.num_image_tokens if uses else 0,
                   image_token=config.image_token, **kwargs)

    @property
    def image_token_id(self) -> int:
        """The tokenizer's id of the image placeholder (set the model's `config.image_token_id` to it)."""
        tok = self.tokenizer
        token_id = tok.convert_tokens_to_ids(self.image_token)
        encoded = tok.encode(self.image_token, add_special_tokens=False)
        if token_id is None or token_id == tok.unk_token_id or encoded != [token_id]:
            raise ValueError(
                f"The tokenizer has no {self.image_token!r} token (it encodes it as {encoded}). Add it and grow the "
                f"model's embeddings: tokenizer.add_tokens([{self.image_token!r}], special_tokens=True); "
                "model.resize_token_embeddings(len(tokenizer)); "
                f"model.config.image_token_id = tokenizer.convert_tokens_to_ids({self.image_token!r})."
            )
        return token_id

    # -- call ---------------------------------------------------------------------------------------------------------
    def __call__(self, images=None, text=None, padding=False, truncation=None, max_length: Optional[int] = None,
                 return_tensors: Optional[str] = "pt", images_kwargs: Optional[dict] = None, videos=None,
                 **kwargs) -> BatchFeature:
        """``text``: a string or a list of strings with one ``<image>`` where each image goes; ``images``: one image, a
        list of images (in the order of the placeholders over the whole batch) or a list of lists (per text).
        Returns a `BatchFeature` with ``input_ids``, ``attention_mask`` (text) and ``pixel_values`` (images).
        ``videos`` (a model with a video tower; its processor is a video processor such as `StormVideoProcessor`):
        one video (a numpy array (T, H, W, C) or a tensor (T, C, H, W)), a list of them or a list of lists (per
        text), placed like images at the ``<video>`` placeholders; the video processor gives
        ``pixel_values_videos``. Other keyword arguments go to the tokenizer; ``images_kwargs`` to the image /
        video processor."""
        if images is not None and videos is not None:
            raise ValueError("Pass images or videos, not both: the model has one vision tower.")
        if videos is not None:
            images = videos if isinstance(videos, (list, tuple)) else [videos]
        if images is None and text is None:
            raise ValueError("SsmVlmProcessor needs text, images or both.")
        flat_images, per_text = self._flatten_images(images)
        data = {}
        if text is not None:
            texts = self._expand(self._as_texts(text), flat_images, per_text)
            encoded = self.tokenizer(texts, padding=padding, truncation=truncation, max_length=max_length,
                                     return_tensors=None, **kwargs)
            self._check_encoded(texts, encoded["input_ids"])
            data.update(encoded)
        if flat_images:
            self._check_finite(flat_images)
            images_kwargs = dict(images_kwargs or {})
            if videos is None and all(isinstance(im, Image.Image) for im in flat_images):
                # PIL images are channels-last: say so, or transformers (5.0) guesses from the shape and takes a
                # 1- or 3-pixel-high image for a channels-first one
                images_kwargs.setdefault("input_data_format", "channels_last")
            try:
                data.update(self.image_processor(flat_images, return_tensors=return_tensors, **images_kwargs))
            except (ValueError, TypeError) as err:
                if videos is not None:  # the video processor's own errors name the video and frame already
                    raise
                raise ValueError(
                    f"{type(self.image_processor).__name__} could not process the {len(flat_images)} image(s): {err} "
                    "Images are RGB PIL images, or arrays / tensors the image processor reads; for an array whose "
                    "layout it cannot tell (e.g. 1 or 3 pixels high), pass images_kwargs={'input_data_format': "
                    "'channels_last'} (H, W, C) or 'channels_first' (C, H, W)."
                ) from err
        return BatchFeature(data=data, tensor_type=return_tensors)

    @staticmethod
    def _as_texts(text) -> List[str]:
        if isinstance(text, str):
            return [text]
        if isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
            if not text:
                raise ValueError("text is an empty list: pass at least one string (or text=None for images only).")
            return list(text)
        raise TypeError(f"text must be a string or a list of strings, got {type(text).__name__}")

    @staticmethod
    def _check_finite(images):
        """Float images (numpy arrays, tensors; also each frame of a video) with NaN / inf values are a ValueError
        naming the image, before the image processor (which fails on them deep inside, or passes them on)."""
        for i, image in enumerate(images):
            frames = image if isinstance(image, (list, tuple)) else [image]
            for frame in frames:
                if isinstance(frame, torch.Tensor) and frame.is_floating_point():
                    bad = int((~torch.isfinite(frame)).sum())
                elif isinstance(frame, np.ndarray) and np.issubdtype(frame.dtype, np.floating):
                    bad = int((~np.isfinite(frame)).sum())
                else:
                    continue
                if bad:
                    raise ValueError(f"Image {i} holds {bad} NaN or infinite pixel value(s); check how it was loaded "
                                     "or computed.")

    @staticmethod
    def _flatten_images(images):
        """-> (list of images, per-text counts or None)."""
        if images is None:
            return [], None
        if isinstance(images, (list, tuple)):
            if images and all(isinstance(x, (list, tuple)) for x in images):
                return [im for group in images for im in group], [len(group) for group in images]
            return list(images), None
        return [images], None

    def _expand(self, texts: List[str], images: Sequence, per_text: Optional[List[int]]) -> List[str]:
        token = self.image_token
        counts = [t.count(token) for t in texts]
        n_images, n_slots = len(images), sum(counts)
        if self.num_image_tokens == 0:  # no placeholders in the model's input: one image per text, markers dropped
            if images and n_images != len(texts):
                raise ValueError(f"This model fuses each text with exactly one image (cross-attention without an image "
                                 f"prefix): got {n_images} image(s) for {len(texts)} text(s).")
            return [t.replace(token, "") for t in texts]
        if per_text is not None and len(per_text) != len(texts):
            raise ValueError(f"Got image lists for {len(per_text)} texts but {len(texts)} texts.")
        if n_slots and not images:
            raise ValueError(f"The text holds {n_slots} {token!r} placeholder(s) but no images were given; pass "
                             "images=... (one per placeholder) or remove the placeholders.")
        if images and not n_slots:
            raise ValueError(f"Got {n_images} image(s) but the text holds no {token!r} placeholder; write one "
                             f"{token!r} where each image goes (e.g. with the chat template's image part).")
        if n_images > n_slots:
            raise ValueError(f"More images ({n_images}) than {token!r} placeholders ({n_slots}) in the text; write one "
                             f"{token!r} per image.")
        if n_images < n_slots:
            raise ValueError(f"More {token!r} placeholders ({n_slots}) than images ({n_images}); pass one image per "
                             "placeholder.")
        if per_text is not None and per_text != counts:
            raise ValueError(f"Images per text {per_text} do not match the {token!r} placeholders per text {counts}.")
        if self.num_image_tokens is None:
            raise ValueError("SsmVlmProcessor.num_image_tokens is not set: build the processor with "
                             "SsmVlmProcessor.from_config(model.config, image_processor, tokenizer).")
        return [t.replace(token, token * self.num_image_tokens) for t in texts]

    def _check_encoded(self, texts: List[str], input_ids):
        if not self.num_image_tokens:
            return
        token_id = self.image_token_id
        for i, (text, ids) in enumerate(zip(texts, input_ids)):
            expected = text.count(self.image_token)
            got = sum(1 for t in ids if t == token_id)
            if got != expected:
                raise ValueError(f"Text {i} holds {expected} image tokens but {got} remain after tokenization "
                                 "(truncation cut them?); raise max_length or shorten the text.")


__all__ = ["SsmVlmProcessor"]

# save_pretrained writes `auto_map` and copies this file, so AutoProcessor.from_pretrained(..., trust_remote_code=True)
# works without ssmvl installed.
SsmVlmProcessor.register_for_auto_class("AutoProcessor")
