"""Generated moving shapes clips: seeded videos of coloured shapes that move left / right / up / down (or stay still),
change colour, appear or disappear, with a direction label, captions and question/answer pairs, as
``datasets.Dataset`` (no network, numpy + PIL only). The still-image scenes' house style (training/shapes.py): the same
``COLORS`` / ``SHAPES`` / background, the same drawing (``shapes.draw_shape``: filled, no anti-aliasing), the same
held-out rule (``shapes.is_held_out_key``) and the same word-level tokenizer (``shapes.build_shapes_tokenizer`` with
this module's vocabulary).

A *clip* is a list of 1..``max_objects`` objects (dicts; the ``objects`` column) with

* ``shape`` in ``SHAPES``, ``color`` in ``COLORS`` (its colour at frame 0; colours are distinct inside a clip, at every
  frame, so a colour names one object), ``rgb_jitter``: a fixed offset of up to +-``COLOR_JITTER`` per channel,
* ``motion`` in ``MOTIONS`` ("left", "right", "up", "down", "still"), ``speed``: a name of ``SPEEDS`` ("slow" / "fast",
  "none" when still) and ``step``: its pixels per frame (0.0 when still),
* ``x``, ``y``: the centre at frame 0 in pixels (x to the right, y down), ``radius``: half the width of the shape
  (``RADIUS_RANGE`` x ``image_size``); the centre at frame t is ``(x, y) + t * step * DIRECTION_VECTORS[motion]``;
  ``start``: the cell of the 3x3 grid (``shapes.POSITIONS``, "top left" ... "bottom right") holding the frame-0 centre,
* ``event`` in ``EVENTS`` with ``event_frame`` (-1 for "none") and ``new_color`` ("" unless "color_change"):
  "color_change" -- drawn in ``new_color`` from ``event_frame`` on; "appear" -- invisible before ``event_frame``;
  "disappear" -- invisible from ``event_frame`` on. Event frames lie in ``[T // 4, T - T // 4]`` (at least 1), so
  both states are on screen for a while.

Every object stays whole inside the frame for the whole clip (no bouncing: the direction never changes) and objects
never overlap (their squares keep a gap of ``GAP`` pixels at every frame where both are visible). Objects are kept in
``COLORS`` order of their frame-0 colour, which fixes the order of every text.

* ``render_clip`` -> ``uint8`` array ``(T, S, S, 3)`` (frames, height, width, RGB), dark grey background.
* ``clip_caption``: one sentence per object: "a red circle moves left slowly. a blue square stays still and turns
  green." ("appears and ...", "... and disappears" for those events).
* ``clip_questions_with_types``: every (question, answer, question_type) of the templates below whose answer is
  unique; answers are one word (a direction, speed, colour, shape or count word):

  ============================================ ========== ==================================================
  question                                     answer     asked when
  ============================================ ========== ==================================================
  which way does the {color} {shape} move?     direction  it moves and keeps its colour
  which way does the {shape} move?             direction  it moves and its shape is unique
  how fast does the {color} {shape} move?      speed      it moves and keeps its colour ("slow" / "fast")
  how fast does the {shape} move?              speed      it moves and its shape is unique
  what color is the {shape}?                   color      the shape is unique and keeps its colour
  what color does the {shape} turn?            color      the shape is unique and changes colour
  what color is the moving shape?              color      exactly one object moves and keeps its colour
  what shape is moving?                        shape      exactly one object moves
  what shape is {color}?                       shape      an object keeps that colour all along
  what shape appears?                          shape      exactly one object appears
  what shape disappears?                       shape      exactly one object disappears
  how many shapes move?                        count      always ("zero", "one", ...)
  how many shapes are there at the start?      count      always (objects visible at frame 0)
  how many shapes are there at the end?        count      always (objects visible at the last frame)
  ============================================ ========== ==================================================

Datasets. Videos are stored as a fixed-shape ``uint8`` tensor column, ``datasets.Array4D((T, S, S, 3))``: Arrow keeps
it as one contiguous buffer (a 16-frame 32 px clip is 48 KiB, no PNG encoding per frame), and the returned datasets are
formatted so that ``row["video"]`` is a numpy array ``(T, S, S, 3)`` (``ds[:8]["video"]`` a ``(8, T, S, S, 3)`` array)
while the other columns stay Python objects; ``ds.with_format("torch", dtype=torch.uint8)`` gives tensors (without
``dtype`` datasets widens integer columns to int64). ``StormVideoProcessor``
(modeling/video_processing_storm.py) takes these arrays as they are.

* ``make_moving_shapes_dataset``: direction classification. Exactly one object moves (the others, 0..max_objects-1
  distractors, stay still), so the direction is well defined; ``label`` is its direction, a ``datasets.ClassLabel``
  over ``DIRECTIONS`` (``MOTIONS`` with ``include_still=True``: then the one object may also stay still). Labels are
  balanced: each block of ``len(names)`` consecutive clips holds every label once, in a seeded order.
* ``make_moving_shapes_qa_dataset``: one row per question; every object moves or stays still independently
  (uniform over ``MOTIONS``) and has an event with probability ``event_prob``.

Splits: "train" and "test" draw from different random streams (``numpy.random.default_rng([seed, 0 / 1, 7])``) and
are disjoint *as clips* for any seeds and sizes: a clip is held out when ``shapes.is_held_out_key(clip_key(objects))``
(sha256 modulo ``HELD_OUT_MODULUS`` = 10, about a tenth of all clips), where ``clip_key`` lists the objects' discrete
attributes (shape, colour, motion, speed, event, new colour and the start cell -- not exact positions, sizes, jitter or
event frames). Train draws are redrawn while held out, test draws until held out: a test clip is a combination never
seen in training (e.g. a red triangle starting at the bottom left and moving up fast), while each of its parts (a red
triangle, moving up, fast, from the bottom left) occurs in training. The start cell is part of the key so that every
label keeps dozens of held-out combinations, even for one object: without it (192 one-object kinds) a direction could
have one or none. Captions do not name the start cell, so a train and a test clip may share a caption. A dataset of
``n`` clips is the prefix of one of ``m > n`` clips with the same arguments.

The tokenizer (``build_moving_shapes_tokenizer``) is ``shapes.build_shapes_tokenizer`` over
``moving_shapes_vocabulary()`` with ``<image>`` = 4 and ``<video>`` = 5; the shapes chat template renders a
``{"type": "video"}`` part as ``<video>``.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .shapes import (BACKGROUND, COLOR_JITTER, COLOR_RGB, COLORS, GRID, IMAGE_TOKEN, NUMBER_WORDS, POSITIONS, SHAPES,
                     SPLIT_STREAMS, VIDEO_TOKEN, build_shapes_tokenizer, draw_shape, is_held_out_key)

DIRECTIONS: Tuple[str, ...] = ("left", "right", "up", "down")
MOTIONS: Tuple[str, ...] = DIRECTIONS + ("still",)
DIRECTION_VECTORS: Dict[str, Tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1),
                                                 "still": (0, 0)}
SPEEDS: Dict[str, float] = {"slow": 0.5, "fast": 1.0}  # pixels per frame: 7.5 / 15 px over 16 frames
SPEED_ADVERBS: Dict[str, str] = {"slow": "slowly", "fast": "quickly"}
EVENTS: Tuple[str, ...] = ("none", "color_change", "appear", "disappear")
RADIUS_RANGE = (0.11, 0.14)  # shape half-width / image_size: 3.5..4.5 px at 32 px (shapes' scenes: 3.6..4.5 at 32)
GAP = 1.5  # pixels between an object's square and the border or another object's square
MAX_OBJECTS = 4
MIN_IMAGE_SIZE = 16
COUNT_WORDS: Tuple[str, ...] = ("zero",) + NUMBER_WORDS
CLIP_QUESTION_TYPES: Tuple[str, ...] = ("direction", "speed", "color", "shape", "count")
_STREAM = 7  # third entry of the seed sequence: these clips never share a random stream with the shapes scenes
_PLACEMENT_TRIES = 20  # start positions drawn per object, and fresh placements of a clip's objects

Clip = List[Dict]


# ---------------------------------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------------------------------
def _check_int(name: str, value, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return int(value)


def _check_speeds(speeds: Optional[Mapping[str, float]]) -> Dict[str, float]:
    if speeds is None:
        return dict(SPEEDS)
    if not isinstance(speeds, Mapping) or not speeds:
        raise ValueError(f"speeds must be a non-empty dict of speed name -> pixels per frame, got {speeds!r}")
    unknown = set(speeds) - set(SPEEDS)
    if unknown:
        raise ValueError(f"Unknown speed names {sorted(unknown)}; use names of {tuple(SPEEDS)} (answers and captions "
                         "use them), with your own pixels per frame")
    out = {}
    for name, value in speeds.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"speeds[{name!r}] must be a positive number of pixels per frame, got {value!r}")
        out[name] = float(value)
    return out


def _check_args(num_frames, image_size, max_objects, speeds, event_prob) -> Dict[str, float]:
    _check_int("num_frames", num_frames, 2)
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    _check_int("max_objects", max_objects, 1, MAX_OBJECTS)
    speeds = _check_speeds(speeds)
    if isinstance(event_prob, bool) or not isinstance(event_prob, (int, float)) or not 0.0 <= event_prob <= 1.0:
        raise ValueError(f"event_prob must be a probability in [0, 1], got {event_prob!r}")
    travel = max(speeds.values()) * (num_frames - 1)
    need = 2 * RADIUS_RANGE[1] * image_size + 2 * GAP + travel
    if need > image_size:
        raise ValueError(
            f"A shape moving {max(speeds.values())} px per frame for {num_frames} frames travels {travel:.1f} px and "
            f"needs {need:.1f} px in a {image_size} px frame; use a larger image_size, fewer frames or slower speeds "
            f"(speeds={{'slow': ..., 'fast': ...}} in pixels per frame)")
    return speeds


def _split_rng(seed, split: str) -> np.random.Generator:
    if split not in SPLIT_STREAMS:
        raise ValueError(f"Unknown split {split!r}; use one of {tuple(SPLIT_STREAMS)}")
    _check_int("seed", seed, 0)
    return np.random.default_rng([int(seed), SPLIT_STREAMS[split], _STREAM])


# ---------------------------------------------------------------------------------------------------------------------
# clips
# ---------------------------------------------------------------------------------------------------------------------
def object_center(obj: Mapping, t) -> Tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) of an object at frame(s) ``t`` (an int or an array of frame indices), in pixels."""
    vx, vy = DIRECTION_VECTORS[obj["motion"]]
    t = np.asarray(t, dtype=np.float64)
    return obj["x"] + vx * obj["step"] * t, obj["y"] + vy * obj["step"] * t


def is_visible(obj: Mapping, t: int) -> bool:
    """Whether the object is drawn at frame ``t`` (its "appear" / "disappear" event)."""
    if obj["event"] == "appear":
        return t >= obj["event_frame"]
    if obj["event"] == "disappear":
        return t < obj["event_frame"]
    return True


def color_at(obj: Mapping, t: int) -> str:
    """The object's colour name at frame ``t``."""
    if obj["event"] == "color_change" and t >= obj["event_frame"]:
        return obj["new_color"]
    return obj["color"]


def object_rgb(obj: Mapping, t: int) -> Tuple[int, int, int]:
    """The exact RGB value of the object's pixels at frame ``t`` (its colour plus its fixed jitter)."""
    rgb = np.clip(np.asarray(COLOR_RGB[color_at(obj, t)]) + np.asarray(obj["rgb_jitter"]), 0, 255)
    return tuple(int(c) for c in rgb)


def _visible_frames(obj: Mapping, num_frames: int) -> np.ndarray:
    return np.asarray([is_visible(obj, t) for t in range(num_frames)])


def _place(rng, obj: Dict, placed: Sequence[Dict], num_frames: int, image_size: int) -> bool:
    """Draws a start centre for ``obj`` whose whole path stays inside the frame and clear of ``placed``; False when
    ``_PLACEMENT_TRIES`` draws all collide."""
    r, travel = obj["radius"], obj["step"] * (num_frames - 1)
    vx, vy = DIRECTION_VECTORS[obj["motion"]]
    low, high = r + GAP, image_size - r - GAP
    # along the motion the start leaves room for the travel: [low, high - travel] moving +, [low + travel, high] -
    x_range = (low + travel * (vx < 0), high - travel * (vx > 0))
    y_range = (low + travel * (vy < 0), high - travel * (vy > 0))
    frames = np.arange(num_frames)
    visible = _visible_frames(obj, num_frames)
    for _ in range(_PLACEMENT_TRIES):
        obj["x"], obj["y"] = float(rng.uniform(*x_range)), float(rng.uniform(*y_range))
        cx, cy = object_center(obj, frames)
        clear = True
        for other in placed:
            ox, oy = object_center(other, frames)
            both = visible & _visible_frames(other, num_frames)
            reach = r + other["radius"] + GAP
            apart = (np.abs(cx - ox) >= reach) | (np.abs(cy - oy) >= reach)
            if not np.all(apart | ~both):
                clear = False
                break
        if clear:
            cell = image_size / GRID
            row, col = min(GRID - 1, int(obj["y"] // cell)), min(GRID - 1, int(obj["x"] // cell))
            obj["start"] = POSITIONS[row * GRID + col]
            return True
    return False


def sample_clip(rng: np.random.Generator, num_frames: int = 16, image_size: int = 32, max_objects: int = 1,
                motions: Optional[Sequence[Optional[str]]] = None, event_prob: float = 0.0,
                speeds: Optional[Mapping[str, float]] = None) -> Optional[Clip]:
    """One clip (list of object dicts, see the module docstring) or None when the objects could not be placed apart
    (draw again). 1..``max_objects`` objects (uniform count, but crowded clips fail placement more often: at 32 px,
    ``max_objects=4`` gives four objects about half as often as one); ``motions``: the motion of each object slot, None for
    uniform over ``MOTIONS`` (the default for every slot); an object with no slot (``motions`` shorter than the count)
    stays still. Each object has an event with probability ``event_prob``."""
    speeds = _check_speeds(speeds)
    n = int(rng.integers(1, max_objects + 1))
    colors = [COLORS[int(i)] for i in rng.choice(len(COLORS), size=n, replace=False)]
    objects: Clip = []
    for i in range(n):
        motion = (motions[i] if i < len(motions) else "still") if motions is not None else None
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))] if motion is None else motion
        if motion not in MOTIONS:
            raise ValueError(f"Unknown motion {motion!r}; use one of {MOTIONS}")
        speed = "none" if motion == "still" else list(speeds)[int(rng.integers(len(speeds)))]
        objects.append({
            "shape": SHAPES[int(rng.integers(len(SHAPES)))], "color": colors[i], "motion": motion, "speed": speed,
            "step": 0.0 if motion == "still" else speeds[speed], "x": 0.0, "y": 0.0, "start": "",
            "radius": float(rng.uniform(*RADIUS_RANGE) * image_size),
            "event": "none", "event_frame": -1, "new_color": "",
            "rgb_jitter": [int(v) for v in rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, size=3)],
        })
    edge = max(1, num_frames // 4)
    for obj in objects:
        if rng.random() >= event_prob:
            continue
        event = EVENTS[1 + int(rng.integers(len(EVENTS) - 1))]
        if event == "color_change":
            used = {o["color"] for o in objects} | {o["new_color"] for o in objects}
            free = [c for c in COLORS if c not in used]
            if not free:  # every colour is taken: no colour change in this clip
                continue
            obj["new_color"] = free[int(rng.integers(len(free)))]
        obj["event"] = event
        obj["event_frame"] = int(rng.integers(edge, max(edge, num_frames - edge) + 1))
    for _ in range(_PLACEMENT_TRIES):  # place the same objects afresh until all fit (few counts are lost to crowding)
        placed: Clip = []
        for obj in objects:
            if not _place(rng, obj, placed, num_frames, image_size):
                break
            placed.append(obj)
        else:
            return sorted(objects, key=lambda o: COLORS.index(o["color"]))
    return None


def clip_key(objects: Sequence[Mapping]) -> str:
    """Canonical text of a clip's discrete attributes (order-free; exact positions, sizes, jitter and event frames
    left out): equal keys <=> the same kind of clip."""
    parts = sorted(f"{o['shape']}|{o['color']}|{o['motion']}|{o['speed']}|{o['event']}|{o['new_color']}|{o['start']}"
                   for o in objects)
    return "clip:" + ";".join(parts)


def is_held_out_clip(objects: Sequence[Mapping]) -> bool:
    """Whether the clip belongs to the test split (``shapes.is_held_out_key`` of ``clip_key``), whatever the seed."""
    return is_held_out_key(clip_key(objects))


def generate_clips(num_clips: int, seed: int = 0, split: str = "train", num_frames: int = 16, image_size: int = 32,
                   max_objects: int = 1, task: str = "qa", include_still: bool = False, event_prob: float = 0.0,
                   speeds: Optional[Mapping[str, float]] = None, max_redraws: int = 10_000) -> List[Clip]:
    """The object lists of the datasets (no frames). ``task``: "classification" (exactly one object moves, balanced
    labels, see ``make_moving_shapes_dataset``; "still" allowed with ``include_still``) or "qa" (every object's motion
    uniform over ``MOTIONS``). ``ValueError`` when ``max_redraws`` draws in a row give no admissible clip."""
    _check_int("num_clips", num_clips, 1)
    _check_int("max_redraws", max_redraws, 1)
    speeds = _check_args(num_frames, image_size, max_objects, speeds, event_prob)
    if task not in ("classification", "qa"):
        raise ValueError(f"Unknown task {task!r}; use 'classification' or 'qa'")
    rng = _split_rng(seed, split)
    want_held_out = split == "test"
    names = label_names(include_still)
    clips: List[Clip] = []
    block: List[str] = []
    while len(clips) < num_clips:
        motions = None
        if task == "classification":
            if not block:  # every label once per block of len(names) clips, in a seeded order
                block = [names[int(i)] for i in rng.permutation(len(names))]
            motions = [block.pop(0)]
        for _ in range(max_redraws):
            clip = sample_clip(rng, num_frames, image_size, max_objects, motions, event_prob, speeds)
            if clip is not None and is_held_out_clip(clip) == want_held_out:
                clips.append(clip)
                break
        else:
            wanted = f" with a {motions[0]!r} object" if motions else ""
            raise ValueError(f"No {split} clip{wanted} in {max_redraws} draws after {len(clips)} clips "
                             f"(max_objects={max_objects}, speeds={speeds}, event_prob={event_prob}, "
                             f"image_size={image_size}): allow more objects, speeds or events, or a larger image")
    return clips


def label_names(include_still: bool = False) -> Tuple[str, ...]:
    """Class names of the direction label: ``DIRECTIONS``, plus "still" with ``include_still``."""
    return MOTIONS if include_still else DIRECTIONS


# ---------------------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------------------
def render_clip(objects: Sequence[Mapping], num_frames: int = 16, image_size: int = 32,
                background: Tuple[int, int, int] = BACKGROUND) -> np.ndarray:
    """``uint8`` array ``(num_frames, image_size, image_size, 3)``: every visible object drawn at its centre of each
    frame in its colour of that frame (``object_rgb``), ``shapes.draw_shape`` (no anti-aliasing)."""
    from PIL import Image, ImageDraw

    frames = np.empty((num_frames, image_size, image_size, 3), dtype=np.uint8)
    for t in range(num_frames):
        image = Image.new("RGB", (image_size, image_size), tuple(int(c) for c in background))
        draw = ImageDraw.Draw(image)
        for obj in objects:
            if is_visible(obj, t):
                cx, cy = object_center(obj, t)
                draw_shape(draw, obj["shape"], float(cx), float(cy), obj["radius"], object_rgb(obj, t))
        frames[t] = np.asarray(image)
    return frames


# ---------------------------------------------------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------------------------------------------------
def _object_sentence(obj: Mapping) -> str:
    action = "stays still" if obj["motion"] == "still" else f"moves {obj['motion']} {SPEED_ADVERBS[obj['speed']]}"
    head = f"a {obj['color']} {obj['shape']}"
    if obj["event"] == "appear":
        return f"{head} appears and {action}."
    if obj["event"] == "disappear":
        return f"{head} {action} and disappears."
    if obj["event"] == "color_change":
        return f"{head} {action} and turns {obj['new_color']}."
    return f"{head} {action}."


def clip_caption(objects: Sequence[Mapping]) -> str:
    """One sentence per object, in the clip's order: "a red circle moves left slowly. a blue square stays still.\""""
    return " ".join(_object_sentence(o) for o in objects)


def clip_questions_with_types(objects: Sequence[Mapping], num_frames: int = 16) -> List[Tuple[str, str, str]]:
    """Every (question, answer, question_type) of the templates (module docstring) whose answer is unique in the clip,
    in a fixed order: per object in the clip's order, then the clip-wide questions."""
    shape_count = {s: sum(o["shape"] == s for o in objects) for s in SHAPES}
    movers = [o for o in objects if o["motion"] != "still"]
    out: List[Tuple[str, str, str]] = []
    for o in objects:
        shape, color, unique = o["shape"], o["color"], shape_count[o["shape"]] == 1
        keeps_color = o["event"] != "color_change"
        if o["motion"] != "still":
            if keeps_color:
                out.append((f"which way does the {color} {shape} move?", o["motion"], "direction"))
            if unique:
                out.append((f"which way does the {shape} move?", o["motion"], "direction"))
            if keeps_color:
                out.append((f"how fast does the {color} {shape} move?", o["speed"], "speed"))
            if unique:
                out.append((f"how fast does the {shape} move?", o["speed"], "speed"))
        if unique and keeps_color:
            out.append((f"what color is the {shape}?", color, "color"))
        if unique and not keeps_color:
            out.append((f"what color does the {shape} turn?", o["new_color"], "color"))
        if keeps_color:
            out.append((f"what shape is {color}?", shape, "shape"))
    if len(movers) == 1:
        if movers[0]["event"] != "color_change":
            out.append(("what color is the moving shape?", movers[0]["color"], "color"))
        out.append(("what shape is moving?", movers[0]["shape"], "shape"))
    for event, verb in (("appear", "appears"), ("disappear", "disappears")):
        having = [o for o in objects if o["event"] == event]
        if len(having) == 1:
            out.append((f"what shape {verb}?", having[0]["shape"], "shape"))
    out.append(("how many shapes move?", COUNT_WORDS[len(movers)], "count"))
    for when, t in (("start", 0), ("end", num_frames - 1)):
        visible = sum(is_visible(o, t) for o in objects)
        out.append((f"how many shapes are there at the {when}?", COUNT_WORDS[visible], "count"))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------------------------------------------------
def _object_feature():
    from datasets import Value

    return [{"shape": Value("string"), "color": Value("string"), "motion": Value("string"), "speed": Value("string"),
             "step": Value("float64"), "x": Value("float64"), "y": Value("float64"), "start": Value("string"),
             "radius": Value("float64"),
             "event": Value("string"), "event_frame": Value("int32"), "new_color": Value("string"),
             "rgb_jitter": [Value("int32")]}]


def _video_feature(num_frames: int, image_size: int):
    from datasets import Array4D

    return Array4D(shape=(num_frames, image_size, image_size, 3), dtype="uint8")


def _numpy_videos(ds):
    """``row["video"]`` as a ``uint8`` numpy array (datasets would widen integers to int64), the other columns as
    Python objects."""
    ds.set_format("numpy", columns=["video"], dtype=np.uint8, output_all_columns=True)
    return ds


def make_moving_shapes_dataset(num_clips: int, seed: int = 0, split: str = "train", num_frames: int = 16,
                               image_size: int = 32, max_objects: int = 1, include_still: bool = False,
                               event_prob: float = 0.0, speeds: Optional[Mapping[str, float]] = None,
                               max_redraws: int = 10_000):
    """``datasets.Dataset`` for direction classification, one row per clip:

    * ``video``: ``uint8`` ``(num_frames, image_size, image_size, 3)`` (``datasets.Array4D``, read as numpy),
    * ``label``: ``datasets.ClassLabel`` over ``DIRECTIONS`` (``MOTIONS`` with ``include_still``): the motion of the
      one moving object (``ds.features["label"].names``),
    * ``caption``: str (``clip_caption``),
    * ``objects``: list of object dicts (module docstring); exactly one has ``motion`` == the label's name, the others
      (0..``max_objects``-1 distractors) stay still.

    ``event_prob``: each object's chance of a colour change / appearing / disappearing (default none). ``speeds``:
    {"slow": px, "fast": px} per frame (default ``SPEEDS``). ``split``: "train" or "test" (held-out clips). Labels are
    balanced (every label once per block of ``len(names)`` clips). Deterministic for the arguments; fewer clips give a
    prefix."""
    from datasets import ClassLabel, Dataset, Features, Value

    clips = generate_clips(num_clips, seed, split, num_frames, image_size, max_objects, "classification",
                           include_still, event_prob, speeds, max_redraws)
    names = label_names(include_still)
    main = [next((o for o in clip if o["motion"] != "still"), clip[0]) for clip in clips]
    rows = {
        "video": [render_clip(clip, num_frames, image_size) for clip in clips],
        "label": [names.index(o["motion"]) for o in main],
        "caption": [clip_caption(clip) for clip in clips],
        "objects": clips,
    }
    features = Features({"video": _video_feature(num_frames, image_size), "label": ClassLabel(names=list(names)),
                         "caption": Value("string"), "objects": _object_feature()})
    return _numpy_videos(Dataset.from_dict(rows, features=features))


def make_moving_shapes_qa_dataset(num_clips: int, seed: int = 0, split: str = "train", num_frames: int = 16,
                                  image_size: int = 32, max_objects: int = 2, event_prob: float = 0.5,
                                  speeds: Optional[Mapping[str, float]] = None, max_questions: Optional[int] = None,
                                  question_types: Optional[Sequence[str]] = None, max_redraws: int = 10_000):
    """``datasets.Dataset`` with one row per question about ``num_clips`` clips (1..``max_objects`` objects, each
    moving in a uniform direction of ``MOTIONS`` or still, each with an event with probability ``event_prob``):

    * ``video``: ``uint8`` ``(num_frames, image_size, image_size, 3)`` (the clip's frames, repeated on each of its
      rows: about 48 KiB a row at the defaults; ``max_questions`` bounds the size),
    * ``question`` / ``answer`` (one word) / ``question_type`` (in ``CLIP_QUESTION_TYPES``):
      ``clip_questions_with_types`` in a seeded random order per clip, only ``question_types`` (None: all), then at
      most ``max_questions`` per clip (None: all); a clip left with no question has no row,
    * ``caption``: the clip's caption, ``clip``: its index (``generate_clips(..., task="qa")`` with the same arguments
      gives its objects).

    Deterministic for the arguments; a clip's questions do not depend on ``num_clips``."""
    from datasets import Dataset, Features, Value

    if question_types is not None:
        unknown = set(question_types) - set(CLIP_QUESTION_TYPES)
        if unknown or isinstance(question_types, str):
            raise ValueError(f"Unknown question types {sorted(unknown) or question_types!r}; use a list of "
                             f"{CLIP_QUESTION_TYPES}")
    if max_questions is not None:
        _check_int("max_questions", max_questions, 1)
    clips = generate_clips(num_clips, seed, split, num_frames, image_size, max_objects, "qa", False, event_prob,
                           speeds, max_redraws)
    order_rng = np.random.default_rng([int(seed), SPLIT_STREAMS[split], _STREAM, 1])  # question order
    flat = {name: [] for name in ("video", "question", "answer", "question_type", "caption", "clip")}
    for i, clip in enumerate(clips):
        qa = clip_questions_with_types(clip, num_frames)
        qa = [qa[j] for j in order_rng.permutation(len(qa))]
        if question_types is not None:
            qa = [item for item in qa if item[2] in question_types]
        qa = qa if max_questions is None else qa[:max_questions]
        if not qa:
            continue
        video, text = render_clip(clip, num_frames, image_size), clip_caption(clip)
        for q, a, t in qa:
            flat["video"].append(video)
            flat["question"].append(q)
            flat["answer"].append(a)
            flat["question_type"].append(t)
            flat["caption"].append(text)
            flat["clip"].append(i)
    features = Features({"video": _video_feature(num_frames, image_size), "question": Value("string"),
                         "answer": Value("string"), "question_type": Value("string"), "caption": Value("string"),
                         "clip": Value("int32")})
    return _numpy_videos(Dataset.from_dict(flat, features=features))


# ---------------------------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------------------------
_TEMPLATE_WORDS = ("a", "moves", "stays", "still", "and", "turns", "appears", "disappears", "which", "way", "does",
                   "the", "move", "how", "fast", "what", "color", "is", "turn", "moving", "shape", "many", "shapes",
                   "are", "there", "at", "start", "end", "user", "assistant", "system")
_PUNCTUATION = (".", ",", "?", ":")


def moving_shapes_vocabulary() -> List[str]:
    """Every word and punctuation token of the clips' captions, questions, answers and the chat template (no special
    tokens), in a fixed order."""
    words = list(_TEMPLATE_WORDS) + list(COLORS) + list(SHAPES) + list(MOTIONS) + list(SPEEDS)
    words += list(SPEED_ADVERBS.values()) + list(COUNT_WORDS) + list(_PUNCTUATION)
    return list(dict.fromkeys(words))


def build_moving_shapes_tokenizer(extra_special_tokens: Sequence[str] = (IMAGE_TOKEN, VIDEO_TOKEN),
                                  model_max_length: int = 512):
    """``shapes.build_shapes_tokenizer`` over ``moving_shapes_vocabulary()``: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2,
    ``<unk>`` 3, ``<image>`` 4, ``<video>`` 5 (``tokenizer.video_token_id``), then the words; the shapes chat template
    (a ``{"type": "video"}`` part renders as ``<video>``)."""
    return build_shapes_tokenizer(extra_special_tokens, model_max_length, vocabulary=moving_shapes_vocabulary())


__all__ = [
    "DIRECTIONS", "MOTIONS", "DIRECTION_VECTORS", "SPEEDS", "SPEED_ADVERBS", "EVENTS", "RADIUS_RANGE", "GAP",
    "MAX_OBJECTS", "COUNT_WORDS", "CLIP_QUESTION_TYPES",
    "object_center", "is_visible", "color_at", "object_rgb", "sample_clip", "clip_key", "is_held_out_clip",
    "generate_clips", "label_names", "render_clip", "clip_caption", "clip_questions_with_types",
    "make_moving_shapes_dataset", "make_moving_shapes_qa_dataset", "moving_shapes_vocabulary",
    "build_moving_shapes_tokenizer",
]
