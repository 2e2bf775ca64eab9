"""Processor of the SigLIP-style dual encoder: an image processor (any transformers one, e.g. `CLIPImageProcessor`)
and a tokenizer (any transformers one: MiniLM's BERT WordPiece, a word-level `PreTrainedTokenizerFast`, ...), as
transformers' `SiglipProcessor`. Saved with `auto_map`, so `AutoProcessor.from_pretrained(folder,
trust_remote_code=True)` loads it without ssmvl. Imports only transformers: this file ships next to config.json."""

from __future__ import annotations

from transformers import BatchFeature, ProcessorMixin


class SigLipDualEncoderProcessor(ProcessorMixin):
    r"""
    Wraps an image processor and a tokenizer in one processor.

    `processor(text=..., images=..., return_tensors="pt")` returns `input_ids` / `attention_mask` (and whatever else the
    tokenizer gives, e.g. `token_type_ids`) for the texts and `pixel_values` for the images; either may be left out.
    Tokenizer arguments (`padding`, `truncation`, `max_length`, ...) pass through; texts are padded to the longest by
    default (`padding=True`), left or right as the tokenizer's `padding_side` says -- the model finds the last real
    token from the `attention_mask` either way.

    Args:
        image_processor: a transformers image processor (resize / crop / normalise to the vision tower's input).
        tokenizer: a transformers tokenizer for the text tower.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, **kwargs):
        if images is None and text is None:
            raise ValueError("Pass text=..., images=... or both.")
        return_tensors = kwargs.pop("return_tensors", None)
        output = {}
        if text is not None:
            text_kwargs = {"padding": True, **kwargs}
            output.update(self.tokenizer(text, return_tensors=return_tensors, **text_kwargs))
        if images is not None:
            output.update(self.image_processor(images, return_tensors=return_tensors))
        return BatchFeature(data=output, tensor_type=return_tensors)


__all__ = ["SigLipDualEncoderProcessor"]

SigLipDualEncoderProcessor.register_for_auto_class()  # "AutoProcessor": save_pretrained writes auto_map + this file
