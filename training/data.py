"""Dataset builders that need no network: everything is built from data that ships with Python or a dependency.

* Text: real English from the Python standard library's docstrings (read with ``ast``, nothing is imported) and
  scikit-learn's dataset descriptions (``sklearn/datasets/descr/*.rst``); a small byte-level BPE tokenizer is trained
  on it with ``tokenizers`` and wrapped as a transformers fast tokenizer (``save_pretrained`` -> ``AutoTokenizer``);
  the token stream is cut into fixed-length blocks for causal LM training.
* Images: scikit-learn's ``load_digits`` (1797 real 8x8 handwritten digits, 16 grey levels) upsampled to RGB PIL
  images, with a fixed stratified train/test split, optional shifted variants for LoRA ("invert": ``16 - x``,
  "rotate": 90 degrees) and ``pixel_values`` from a transformers ``ViTImageProcessor``.
"""

from __future__ import annotations

import ast
import glob
import inspect
import itertools
import os
import sysconfig
from typing import Iterable, Iterator, List, Optional, Sequence

import numpy as np

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
DIGITS_SEED = 0
DIGIT_SHIFTS = (None, "invert", "rotate")


# ---------------------------------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------------------------------
def _sklearn_descr_texts() -> List[str]:
    import sklearn

    folder = os.path.join(os.path.dirname(sklearn.__file__), "datasets", "descr")
    texts = []
    for path in sorted(glob.glob(os.path.join(folder, "*.rst"))):
        with open(path, encoding="utf-8") as f:
            texts.append(f.read().strip())
    return texts


def _stdlib_docstrings(min_words: int = 8) -> Iterator[str]:
    """Module, class and function docstrings of the top-level stdlib modules, in a fixed (sorted) order; read with
    ``ast`` so no module is imported (``this`` / ``antigravity`` would print or open a browser)."""
    stdlib = sysconfig.get_paths()["stdlib"]
    for path in sorted(glob.glob(os.path.join(stdlib, "*.py"))):
        if os.path.basename(path).startswith("_"):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
        except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in [tree] + [n for n in ast.walk(tree)
                              if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]:
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc.split()) >= min_words:
                yield inspect.cleandoc(doc)


TEXT_SOURCES = ("sklearn", "stdlib")


def shipped_text_documents(max_chars: Optional[int] = 800_000, sources: Sequence[str] = TEXT_SOURCES) -> List[str]:
    """Real English documents that ship with Python and scikit-learn (no download). Deterministic for a given Python /
    scikit-learn install. ``sources``: "sklearn" (the 14 dataset descriptions, ~43k characters) and / or "stdlib"
    (docstrings of the standard library, a few MB). ``max_chars`` caps the total size (None: everything)."""
    readers = {"sklearn": _sklearn_descr_texts, "stdlib": _stdlib_docstrings}
    unknown = [s for s in sources if s not in readers]
    if unknown:
        raise ValueError(f"Unknown text sources {unknown}; use {TEXT_SOURCES}")
    docs, total = [], 0
    for doc in itertools.chain.from_iterable(readers[s]() for s in sources):  # lazy: stop reading at max_chars
        if max_chars is not None and total + len(doc) > max_chars:
            break
        docs.append(doc)
        total += len(doc)
    return docs


def build_text_corpus(max_chars: Optional[int] = 800_000, sources: Sequence[str] = TEXT_SOURCES):
    """``datasets.Dataset`` with one column ``text`` (one document per row)."""
    from datasets import Dataset

    return Dataset.from_dict({"text": shipped_text_documents(max_chars, sources)})


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2,
                        model_max_length: int = 1_000_000):
    """Trains a byte-level BPE tokenizer (GPT-2 style: bytes never unknown) and wraps it as a transformers fast
    tokenizer with ``<|endoftext|>`` as bos/eos and ``<|pad|>`` as pad; ``save_pretrained`` writes tokenizer.json so
    ``AutoTokenizer.from_pretrained(dir)`` loads it with transformers alone."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, unk_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
    )


def build_lm_dataset(tokenizer, texts: Optional[Sequence[str]] = None, block_size: int = 128,
                     eval_fraction: float = 0.05, seed: int = 0, max_chars: Optional[int] = 800_000):
    """Tokenises the documents (each followed by eos), concatenates them and cuts fixed-length blocks of
    ``block_size`` tokens (the remainder is dropped). Returns a ``DatasetDict`` with ``train`` / ``test`` splits
    (a seeded random ``eval_fraction`` of the blocks), columns ``input_ids`` and ``labels`` (= input_ids; the model
    shifts them)."""
    from datasets import Dataset

    if texts is None:
        texts = shipped_text_documents(max_chars)
    ids: List[int] = []
    eos = tokenizer.eos_token_id
    for enc in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    n_blocks = len(ids) // block_size
    if n_blocks < 2:
        raise ValueError(f"Corpus too small: {len(ids)} tokens for block_size={block_size}")
    blocks = np.asarray(ids[: n_blocks * block_size], dtype=np.int64).reshape(n_blocks, block_size)
    ds = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()})
    n_eval = max(1, int(round(eval_fraction * n_blocks)))
    return ds.train_test_split(test_size=n_eval, seed=seed, shuffle=True)


# ---------------------------------------------------------------------------------------------------------------------
# images: scikit-learn digits
# ---------------------------------------------------------------------------------------------------------------------
def make_digits_processor(image_size: int = 32):
    """A transformers ``ViTImageProcessor``: resize to ``image_size`` (bilinear), RGB, scale to [0, 1], normalise with
    mean = std = 0.5 (so pixels are in [-1, 1]). Saved next to the model so ``pipeline('image-classification')`` and
    ``AutoImageProcessor`` work with transformers alone."""
    try:  # transformers 5 without torchvision: the PIL backend of the same processor (saved as "ViTImageProcessor")
        import torchvision  # noqa: F401
        from transformers import ViTImageProcessor
    except ImportError:
        try:
            from transformers import ViTImageProcessorPil as ViTImageProcessor
        except ImportError:  # transformers 4
            from transformers import ViTImageProcessor

    return ViTImageProcessor(
        do_resize=True, size={"height": image_size, "width": image_size}, resample=2,  # PIL bilinear
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], do_convert_rgb=True,
    )


def shift_digits(images: np.ndarray, shift: Optional[str]) -> np.ndarray:
    """images: (n, 8, 8) grey levels 0..16. "invert": 16 - x (white digit on black becomes black on white);
    "rotate": 90 degrees counter-clockwise; None: unchanged."""
    if shift is None or shift == "none":
        return images
    if shift == "invert":
        return 16.0 - images
    if shift == "rotate":
        return np.rot90(images, k=1, axes=(1, 2)).copy()
    raise ValueError(f"Unknown digits shift {shift!r}; use one of {DIGIT_SHIFTS}")


def digits_to_pil(image8: np.ndarray, image_size: int = 32):
    """One (8, 8) digit with grey levels 0..16 -> RGB PIL image of image_size x image_size (bilinear upsampling)."""
    from PIL import Image

    arr = np.clip(np.round(np.asarray(image8, dtype=np.float64) * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="L").resize((image_size, image_size), Image.BILINEAR).convert("RGB")


def digits_split_indices(test_size: float = 0.2, seed: int = DIGITS_SEED):
    """The fixed stratified train/test split of the 1797 digits (indices into ``load_digits()``)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    target = load_digits().target
    train_idx, test_idx = train_test_split(np.arange(len(target)), test_size=test_size, stratify=target,
                                           random_state=seed)
    return np.sort(train_idx), np.sort(test_idx)


def build_digits_dataset(image_size: int = 32, shift: Optional[str] = None, test_size: float = 0.2,
                         seed: int = DIGITS_SEED, image_processor=None, with_pixel_values: bool = True,
                         max_train: Optional[int] = None, max_test: Optional[int] = None):
    """scikit-learn digits as a ``DatasetDict`` (``train`` / ``test``, stratified, fixed ``seed``) with columns
    ``image`` (RGB PIL, ``image_size`` px), ``label`` (``ClassLabel`` "0".."9") and, if ``with_pixel_values``,
    ``pixel_values`` (3, image_size, image_size) float32 from the image processor (``make_digits_processor`` by
    default). The torch format is set on ``pixel_values`` / ``label`` (what ``Trainer`` needs);
    ``ds["test"].with_format(None)["image"]`` gives the PIL images (for a pipeline). ``shift``: None, "invert" or "rotate" (see ``shift_digits``)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image as ImageFeature

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = shift_digits(digits.images.astype(np.float64), shift)
    train_idx, test_idx = digits_split_indices(test_size, seed)
    if max_train is not None:
        train_idx = train_idx[:max_train]
    if max_test is not None:
        test_idx = test_idx[:max_test]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=[str(i) for i in range(10)])})
    processor = image_processor if image_processor is not None else make_digits_processor(image_size)
    splits = {}
    for name, idx in (("train", train_idx), ("test", test_idx)):
        pil = [digits_to_pil(images[i], image_size) for i in idx]
        data = {"image": pil, "label": [int(digits.target[i]) for i in idx]}
        feats = features
        if with_pixel_values:
            from datasets import Array3D

            pv = processor(pil, return_tensors="np")["pixel_values"].astype(np.float32)
            data["pixel_values"] = pv
            feats = Features({**features, "pixel_values": Array3D(shape=pv.shape[1:], dtype="float32")})
        ds = Dataset.from_dict(data, features=feats)
        if with_pixel_values:
            ds.set_format("torch", columns=["pixel_values", "label"], output_all_columns=False)
        splits[name] = ds
    return DatasetDict(splits)


__all__ = [
    "EOS_TOKEN", "PAD_TOKEN", "TEXT_SOURCES", "shipped_text_documents", "build_text_corpus", "train_bpe_tokenizer", "build_lm_dataset",
    "make_digits_processor", "shift_digits", "digits_to_pil", "digits_split_indices", "build_digits_dataset",
]
