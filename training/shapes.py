"""Generated shapes scenes: seeded images of coloured shapes on a 3x3 grid, with captions and question/answer pairs,
as ``datasets.Dataset`` (no network, numpy + PIL only). Made to be learnable by tiny models at small resolution.

A *scene* is a list of 1..``max_objects`` objects, each a dict ``{"shape", "color", "position"}`` with

* ``color`` in ``COLORS`` (six well separated RGB colours, ``COLOR_RGB``),
* ``shape`` in ``SHAPES`` (circle, square, triangle, cross -- drawn as an "x"),
* ``position`` in ``POSITIONS``: one cell of a 3x3 grid, row-major ("top left", "top middle", "top right",
  "middle left", "center", "middle right", "bottom left", "bottom middle", "bottom right"),

with distinct cells and distinct (colour, shape) pairs inside a scene. The number of objects is uniform in
1..``max_objects``. Objects are kept sorted by cell (row-major), which fixes the order of every text.

* ``render_scene``: a dark grey square image; each shape is drawn in its cell with ``PIL.ImageDraw`` (no
  anti-aliasing): a filled circle, a filled square (the circle's bounding box), a filled upward triangle, or a
  diagonal cross ("x"). Half-width ``0.34..0.42`` of the cell width, centre jitter up to 5% of the cell and colour
  jitter up to +-10 per channel (when an ``rng`` is given), so no two images are pixel-identical, shapes stay inside
  their cell, and the centre pixel of every occupied cell carries its object's colour.
* ``caption``: "a red circle at the top left and a blue square at the center." -- an injective function of the object
  set (cells are unique and listed in grid order), so distinct scenes have distinct captions.
* ``questions``: every question of the templates below whose answer is unique in the scene; answers are one entry of
  ``COLORS`` / ``SHAPES`` / ``POSITIONS`` / ``NUMBER_WORDS`` (short fixed strings):

  ======================================== ========== =====================================
  question                                 answer     asked when
  ======================================== ========== =====================================
  what color is the {shape}?               color      the shape occurs once
  what color is the shape at the {pos}?    color      always
  what shape is at the {pos}?              shape      always
  what shape is {color}?                   shape      the colour occurs once
  where is the {color} {shape}?            position   always
  where is the {shape}?                    position   the shape occurs once
  where is the {color} shape?              position   the colour occurs once
  how many shapes are there?               count      always ("one", "two", ...)
  ======================================== ========== =====================================

Splits (``make_shapes_dataset(..., split=...)``): "train" and "test" draw from different random streams
(``numpy.random.default_rng([seed, 0])`` / ``[seed, 1]``) and are disjoint *as scenes* (object sets), for any sizes
and any seeds: a scene is *held out* when ``sha256`` of its canonical key (``scene_key``) is 0 modulo
``HELD_OUT_MODULUS`` (= 10, about a tenth of all scenes). Train draws are redrawn while held out; test draws are
redrawn until held out. Every (colour, shape, position) combination occurs in both splits -- only whole scenes are
held out. Test scenes are also distinct from each other by default (so captions identify test images uniquely for
retrieval); train scenes may repeat (with different jitter). A dataset of ``n`` scenes is the prefix of one of
``m > n`` scenes with the same arguments.

The word-level tokenizer (``build_shapes_tokenizer``) covers ``shapes_vocabulary()`` exactly; special tokens come
first: ``<pad>`` = 0, ``<s>`` = 1, ``</s>`` = 2, ``<unk>`` = 3, ``<image>`` = 4. Its ``vocabulary`` argument serves
other word lists (the moving shapes clips, ``training/moving_shapes.py``, reuse these colours, shapes, drawing
(``draw_shape``), held-out rule (``is_held_out_key``) and tokenizer).
"""

from __future__ import annotations

import hashlib
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

COLOR_RGB: Dict[str, Tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 100, 245),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 210),
    "white": (240, 240, 240),
}
COLORS: Tuple[str, ...] = tuple(COLOR_RGB)
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "cross")
POSITIONS: Tuple[str, ...] = (
    "top left", "top middle", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom middle", "bottom right",
)
GRID = 3
NUMBER_WORDS: Tuple[str, ...] = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTION_TYPES: Tuple[str, ...] = ("color", "shape", "position", "count")
BACKGROUND = (30, 30, 30)
COLOR_JITTER = 10
SIZE_RANGE = (0.34, 0.42)  # shape half-width / cell width
CENTER_JITTER = 0.05  # / cell width, per axis
HELD_OUT_MODULUS = 10
SPLIT_STREAMS = {"train": 0, "test": 1}

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_TOKEN = "<pad>", "<s>", "</s>", "<unk>", "<image>"
VIDEO_TOKEN = "<video>"  # the video placeholder of the moving shapes clips (training/moving_shapes.py)

# A chat is "<s>" then, per message, "{role}: {content} " -- an assistant message ends with "</s>" -- and, with
# add_generation_prompt, a final "assistant:". Content is a string (may contain "<image>") or a list of parts
# ({"type": "image"} -> "<image>", {"type": "video"} -> "<video>", {"type": "text", "text": ...} -> the text), joined
# with spaces.
SHAPES_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] + ': ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if not loop.first %}{{ ' ' }}{% endif %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% elif part['type'] == 'video' %}{{ '<video>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% if not loop.last or add_generation_prompt %}{{ ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
)

Scene = List[Dict[str, str]]


# ---------------------------------------------------------------------------------------------------------------------
# scenes
# ---------------------------------------------------------------------------------------------------------------------
def _cell(position: str) -> Tuple[int, int]:
    """(row, column) of a grid position name."""
    index = POSITIONS.index(position)
    return divmod(index, GRID)


def _sorted(objects: Sequence[Dict[str, str]]) -> Scene:
    return sorted((dict(o) for o in objects), key=lambda o: POSITIONS.index(o["position"]))


def validate_scene(objects: Sequence[Dict[str, str]]) -> None:
    """Raises ``ValueError`` unless the objects use the vocabulary, occupy distinct cells and have distinct
    (colour, shape) pairs."""
    if not objects:
        raise ValueError("A scene needs at least one object")
    for o in objects:
        if o.get("color") not in COLOR_RGB or o.get("shape") not in SHAPES or o.get("position") not in POSITIONS:
            raise ValueError(f"Unknown object {o!r}; colours {COLORS}, shapes {SHAPES}, positions {POSITIONS}")
    if len({o["position"] for o in objects}) != len(objects):
        raise ValueError(f"Two objects share a cell: {objects!r}")
    if len({(o["color"], o["shape"]) for o in objects}) != len(objects):
        raise ValueError(f"Two objects share colour and shape: {objects!r}")


def sample_scene(rng: np.random.Generator, max_objects: int = 2) -> Scene:
    """1..``max_objects`` objects (uniform count) in distinct cells with distinct (colour, shape) pairs, sorted by
    cell. ``max_objects`` is at most 9 (the grid)."""
    if not 1 <= max_objects <= GRID * GRID:
        raise ValueError(f"max_objects must be in 1..{GRID * GRID}, got {max_objects}")
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    pairs = rng.choice(len(COLORS) * len(SHAPES), size=n, replace=False)  # distinct (colour, shape) pairs
    objects = [{"shape": SHAPES[int(p) % len(SHAPES)], "color": COLORS[int(p) // len(SHAPES)],
                "position": POSITIONS[int(c)]} for c, p in zip(cells, pairs)]
    return _sorted(objects)


def scene_key(objects: Sequence[Dict[str, str]]) -> str:
    """Canonical text of the object set (order-free): equal keys <=> the same scene up to jitter."""
    return ";".join(f"{o['position']}|{o['color']}|{o['shape']}" for o in _sorted(objects))


def is_held_out(objects: Sequence[Dict[str, str]]) -> bool:
    """Whether the scene belongs to the test split (sha256 of ``scene_key`` is 0 modulo ``HELD_OUT_MODULUS``);
    independent of seeds and sizes, so train and test never share a scene."""
    return is_held_out_key(scene_key(objects))


def is_held_out_key(key: str) -> bool:
    """The held-out rule on a canonical key (any text): sha256 of its UTF-8 bytes, first 8 bytes big-endian, is 0
    modulo ``HELD_OUT_MODULUS``. Shared by the scenes (``scene_key``) and the moving shapes clips."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELD_OUT_MODULUS == 0


# ---------------------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------------------
def _shape_polygons(shape: str, cx: float, cy: float, r: float) -> List[List[Tuple[float, float]]]:
    """Polygons of a shape of "radius" ``r`` (half its width) centred at (cx, cy); each contains (cx, cy) with a
    margin of at least ``0.25 r``."""
    if shape == "square":  # the circle's bounding box: differs from the circle in the corners
        return [[(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]]
    if shape == "triangle":  # pointing up; (cx, cy) is 0.49 r from its sides
        return [[(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)]]
    if shape == "cross":  # an "x": two diagonal bars of half-width 0.25 r (unlike a "+", never mistaken for a small
        # pixelated circle)
        half_len, half_width, bars = 1.15 * r, 0.25 * r, []
        for ux, uy in ((math.sqrt(0.5), math.sqrt(0.5)), (math.sqrt(0.5), -math.sqrt(0.5))):
            vx, vy = -uy, ux
            bars.append([(cx + a * ux * half_len + b * vx * half_width, cy + a * uy * half_len + b * vy * half_width)
                         for a, b in ((1, 1), (1, -1), (-1, -1), (-1, 1))])
        return bars
    raise ValueError(f"Unknown shape {shape!r}; use one of {SHAPES}")


def render_scene(objects: Sequence[Dict[str, str]], image_size: int = 64,
                 background: Tuple[int, int, int] = BACKGROUND, rng: Optional[np.random.Generator] = None):
    """RGB ``PIL.Image`` of ``image_size`` x ``image_size``: each object drawn in its grid cell (no anti-aliasing).
    With ``rng``: "radius" (half width) uniform in ``SIZE_RANGE`` x cell width, centre shifted by up to
    ``CENTER_JITTER`` x cell width per axis and colour by up to +-``COLOR_JITTER`` per channel; without: the mean
    radius, centred, exact colours. Shapes stay inside their cell (``image_size`` >= 24) and the centre pixel of an
    object's cell always shows its colour. Shapes are clearly apart from ``image_size`` 32 up (a circle is then ~8 px
    wide); 64 (the default) leaves room to spare."""
    from PIL import Image, ImageDraw

    validate_scene(objects)
    image = Image.new("RGB", (image_size, image_size), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image)
    cell = image_size / GRID
    for o in _sorted(objects):
        row, col = _cell(o["position"])
        cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
        color = np.asarray(COLOR_RGB[o["color"]], dtype=np.int64)
        if rng is not None:
            r = cell * rng.uniform(*SIZE_RANGE)
            dx, dy = rng.uniform(-CENTER_JITTER, CENTER_JITTER, size=2)
            cx, cy = cx + cell * dx, cy + cell * dy
            color = np.clip(color + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3), 0, 255)
        else:
            r = cell * sum(SIZE_RANGE) / 2
        draw_shape(draw, o["shape"], cx, cy, r, tuple(int(c) for c in color))
    return image


def draw_shape(draw, shape: str, cx: float, cy: float, r: float, fill: Tuple[int, int, int]) -> None:
    """Draws one filled shape of "radius" ``r`` (half its width) centred at (cx, cy) on a ``PIL.ImageDraw.Draw``, no
    anti-aliasing: a circle, a square (the circle's bounding box), an upward triangle (from ``cy - r`` to
    ``cy + 0.8 r``) or an "x" cross (two diagonal bars); every shape stays inside the square of half-width ``r``."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        return
    for polygon in _shape_polygons(shape, cx, cy, r):
        draw.polygon(polygon, fill=fill)


# ---------------------------------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------------------------------
def caption(objects: Sequence[Dict[str, str]]) -> str:
    """"a red circle at the top left, a green cross at the center and a blue square at the bottom right." (objects in
    grid order; injective in the object set)."""
    parts = [f"a {o['color']} {o['shape']} at the {o['position']}" for o in _sorted(objects)]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text + "."


def questions_with_types(objects: Sequence[Dict[str, str]]) -> List[Tuple[str, str, str]]:
    """Every (question, answer, question_type) of the templates (module docstring) whose answer is unique in the
    scene, in a fixed order (objects in grid order, then the count question)."""
    objects = _sorted(objects)
    validate_scene(objects)
    shape_count = {s: sum(o["shape"] == s for o in objects) for s in SHAPES}
    color_count = {c: sum(o["color"] == c for o in objects) for c in COLORS}
    out: List[Tuple[str, str, str]] = []
    for o in objects:
        shape, color, pos = o["shape"], o["color"], o["position"]
        if shape_count[shape] == 1:
            out.append((f"what color is the {shape}?", color, "color"))
        out.append((f"what color is the shape at the {pos}?", color, "color"))
        out.append((f"what shape is at the {pos}?", shape, "shape"))
        if color_count[color] == 1:
            out.append((f"what shape is {color}?", shape, "shape"))
        out.append((f"where is the {color} {shape}?", pos, "position"))
        if shape_count[shape] == 1:
            out.append((f"where is the {shape}?", pos, "position"))
        if color_count[color] == 1:
            out.append((f"where is the {color} shape?", pos, "position"))
    out.append(("how many shapes are there?", NUMBER_WORDS[len(objects) - 1], "count"))
    return out


def questions(objects: Sequence[Dict[str, str]], rng: Optional[np.random.Generator] = None,
              max_questions: Optional[int] = None) -> List[Tuple[str, str]]:
    """(question, answer) pairs with a unique answer in the scene (``questions_with_types`` without the type);
    shuffled by ``rng`` when given, then cut to ``max_questions``."""
    return [(q, a) for q, a, _ in _select(questions_with_types(objects), rng, max_questions)]


def _select(items: list, rng: Optional[np.random.Generator], max_questions: Optional[int]) -> list:
    if rng is not None:
        items = [items[i] for i in rng.permutation(len(items))]
    return items if max_questions is None else items[:max_questions]


# ---------------------------------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------------------------------
def _scene_features():
    from datasets import Features, Image as ImageFeature, Value

    return Features({
        "image": ImageFeature(),
        "caption": Value("string"),
        "objects": [{"shape": Value("string"), "color": Value("string"), "position": Value("string")}],
        "questions": [Value("string")],
        "answers": [Value("string")],
        "question_types": [Value("string")],
    })


def generate_scenes(num_scenes: int, seed: int, max_objects: int = 2, split: str = "train",
                    distinct: Optional[bool] = None, max_redraws: int = 100_000) -> List[Scene]:
    """The object lists of ``make_shapes_dataset`` (no images). ``distinct`` (default: True for "test") redraws
    scenes already drawn; ``ValueError`` when ``max_redraws`` draws in a row find no admissible scene (the split's
    scene space is exhausted, e.g. many distinct test scenes with ``max_objects=1``)."""
    return _draw_scenes(_split_rng(seed, split), num_scenes, max_objects, split, distinct, max_redraws)


def _split_rng(seed: int, split: str) -> np.random.Generator:
    if split not in SPLIT_STREAMS:
        raise ValueError(f"Unknown split {split!r}; use one of {tuple(SPLIT_STREAMS)}")
    return np.random.default_rng([int(seed), SPLIT_STREAMS[split]])


def _draw_scenes(rng, num_scenes, max_objects, split, distinct, max_redraws) -> List[Scene]:
    distinct = (split == "test") if distinct is None else distinct
    want_held_out = split == "test"
    scenes: List[Scene] = []
    seen = set()
    while len(scenes) < num_scenes:
        for _ in range(max_redraws):
            objects = sample_scene(rng, max_objects)
            if is_held_out(objects) != want_held_out:
                continue
            key = scene_key(objects)
            if distinct and key in seen:
                continue
            seen.add(key)
            scenes.append(objects)
            break
        else:
            raise ValueError(f"No new {split} scene in {max_redraws} draws after {len(scenes)} scenes "
                             f"(max_objects={max_objects}, distinct={distinct}): ask for fewer scenes or more objects")
    return scenes


def _scene_rows(num_scenes, seed, image_size, max_objects, split, max_questions, distinct):
    scenes = generate_scenes(num_scenes, seed, max_objects, split, distinct)
    render_rng = np.random.default_rng([int(seed), SPLIT_STREAMS[split], 1])  # jitter + question order
    rows = {name: [] for name in ("image", "caption", "objects", "questions", "answers", "question_types")}
    for objects in scenes:
        qa = _select(questions_with_types(objects), render_rng, max_questions)
        rows["image"].append(render_scene(objects, image_size, rng=render_rng))
        rows["caption"].append(caption(objects))
        rows["objects"].append(objects)
        rows["questions"].append([q for q, _, _ in qa])
        rows["answers"].append([a for _, a, _ in qa])
        rows["question_types"].append([t for _, _, t in qa])
    return rows


def make_shapes_dataset(num_scenes: int, seed: int = 0, image_size: int = 64, max_objects: int = 2,
                        split: str = "train", max_questions: Optional[int] = None, distinct: Optional[bool] = None):
    """``datasets.Dataset`` with one row per scene:

    * ``image``: RGB PIL image (``datasets.Image``), ``image_size`` px square,
    * ``caption``: str (``caption``),
    * ``objects``: list of ``{"shape", "color", "position"}`` dicts in grid order,
    * ``questions`` / ``answers`` / ``question_types``: parallel lists of str (``questions_with_types``; types in
      ``QUESTION_TYPES``), in a seeded random order, at most ``max_questions`` per scene (None: all).

    ``split``: "train" or "test" (held-out scenes, see the module docstring); ``distinct``: no repeated scene (default
    only for "test"). Deterministic for the arguments; fewer scenes give a prefix."""
    from datasets import Dataset

    rows = _scene_rows(num_scenes, seed, image_size, max_objects, split, max_questions, distinct)
    return Dataset.from_dict(rows, features=_scene_features())


def make_shapes_qa_dataset(num_scenes: int, seed: int = 0, image_size: int = 64, max_objects: int = 2,
                           split: str = "train", max_questions: Optional[int] = None,
                           distinct: Optional[bool] = None, question_types: Optional[Sequence[str]] = None):
    """The scenes of ``make_shapes_dataset`` (same arguments, same images) flattened to one row per question:
    columns ``image``, ``question``, ``answer``, ``question_type``, ``caption``, ``scene`` (row index of the scene).
    ``question_types``: keep only these types (e.g. ``("color", "shape", "position")``); None keeps all."""
    from datasets import Dataset, Features, Image as ImageFeature, Value

    if question_types is not None:
        unknown = set(question_types) - set(QUESTION_TYPES)
        if unknown:
            raise ValueError(f"Unknown question types {sorted(unknown)}; use {QUESTION_TYPES}")
    rows = _scene_rows(num_scenes, seed, image_size, max_objects, split, max_questions, distinct)
    flat = {name: [] for name in ("image", "question", "answer", "question_type", "caption", "scene")}
    for i, (image, cap, qs, ans, types) in enumerate(zip(rows["image"], rows["caption"], rows["questions"],
                                                         rows["answers"], rows["question_types"])):
        for q, a, t in zip(qs, ans, types):
            if question_types is not None and t not in question_types:
                continue
            flat["image"].append(image)
            flat["question"].append(q)
            flat["answer"].append(a)
            flat["question_type"].append(t)
            flat["caption"].append(cap)
            flat["scene"].append(i)
    features = Features({"image": ImageFeature(), "question": Value("string"), "answer": Value("string"),
                         "question_type": Value("string"), "caption": Value("string"), "scene": Value("int32")})
    return Dataset.from_dict(flat, features=features)


# ---------------------------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------------------------
_TEMPLATE_WORDS = ("a", "at", "the", "and", "what", "color", "is", "shape", "where", "how", "many", "shapes", "are",
                   "there", "user", "assistant", "system")
_PUNCTUATION = (".", ",", "?", ":")


def shapes_vocabulary() -> List[str]:
    """Every word and punctuation token of captions, questions, answers and the chat template (no special tokens),
    in a fixed order."""
    words = list(_TEMPLATE_WORDS) + list(COLORS) + list(SHAPES)
    words += [w for p in POSITIONS for w in p.split()] + list(NUMBER_WORDS) + list(_PUNCTUATION)
    return list(dict.fromkeys(words))


def build_shapes_tokenizer(extra_special_tokens: Sequence[str] = (IMAGE_TOKEN,), model_max_length: int = 512,
                           vocabulary: Optional[Sequence[str]] = None):
    """A word-level transformers fast tokenizer over ``vocabulary`` (default ``shapes_vocabulary()``; the moving shapes
    clips pass ``moving_shapes_vocabulary()``).

    * ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3, then ``extra_special_tokens`` (``<image>`` = 4 by
      default), then the vocabulary (duplicates dropped); pad / bos / eos / unk tokens set;
      ``tokenizer.image_token(_id)`` / ``tokenizer.video_token(_id)`` when ``<image>`` / ``<video>`` is among the
      extra tokens.
    * lower-cases, splits on whitespace and isolates each punctuation character ("circle?" -> "circle", "?").
    * adds NO special tokens by itself (``tokenizer("a red circle.")`` is just the words); the chat template writes
      ``<s>`` and ``</s>`` (``SHAPES_CHAT_TEMPLATE``: "<s>user: <image> what color is the circle? assistant: red</s>").
    * decodes with single spaces and no space before ". , ? :" (``decode`` gives the caption / chat text back).
    ``save_pretrained`` -> ``AutoTokenizer.from_pretrained`` works with transformers alone, offline."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(dict.fromkeys([PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, *extra_special_tokens]))
    words = shapes_vocabulary() if vocabulary is None else list(dict.fromkeys(vocabulary))
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation(behavior="isolated")])
    # WordPiece (no "##" pieces here) joins words with spaces and removes the space before ". , ?"; and before ":"
    tok.decoder = decoders.Sequence([decoders.WordPiece(prefix="##", cleanup=True), decoders.Replace(" :", ":")])
    tok.add_special_tokens(specials)
    extra = specials[4:]
    named = {name: token for name, token in (("image_token", IMAGE_TOKEN), ("video_token", VIDEO_TOKEN))
             if token in extra}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD_TOKEN, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN,
        extra_special_tokens=extra, model_max_length=model_max_length, **named,
    )
    tokenizer.chat_template = SHAPES_CHAT_TEMPLATE
    return tokenizer


__all__ = [
    "COLORS", "COLOR_RGB", "SHAPES", "POSITIONS", "NUMBER_WORDS", "QUESTION_TYPES", "BACKGROUND", "COLOR_JITTER",
    "SIZE_RANGE", "CENTER_JITTER", "HELD_OUT_MODULUS",
    "PAD_TOKEN", "BOS_TOKEN", "EOS_TOKEN", "UNK_TOKEN", "IMAGE_TOKEN", "VIDEO_TOKEN", "SHAPES_CHAT_TEMPLATE",
    "validate_scene", "sample_scene", "scene_key", "is_held_out", "is_held_out_key", "render_scene", "draw_shape",
    "caption", "questions", "questions_with_types", "generate_scenes", "make_shapes_dataset", "make_shapes_qa_dataset",
    "shapes_vocabulary", "build_shapes_tokenizer",
]
