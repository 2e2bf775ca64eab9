"""Generated moving shapes clips (training/moving_shapes.py): labels, motion and events checked on the pixels, splits,
determinism, question answers, argument errors and the word-level tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from ssmvl.training import moving_shapes as M
from ssmvl.training import shapes as S

N_TRAIN, N_TEST = 80, 40


@pytest.fixture(scope="module")
def train_ds():
    return M.make_moving_shapes_dataset(N_TRAIN, seed=0, max_objects=2)


@pytest.fixture(scope="module")
def test_ds():
    return M.make_moving_shapes_dataset(N_TEST, seed=0, split="test", max_objects=2)


@pytest.fixture(scope="module")
def qa_clips():
    """QA clips with many events, and their frames."""
    clips = M.generate_clips(60, seed=3, max_objects=3, task="qa", event_prob=0.8)
    return [(clip, M.render_clip(clip)) for clip in clips]


def _mask(video: np.ndarray, rgb) -> np.ndarray:
    """(T, H, W) pixels that have exactly this colour."""
    return np.all(video == np.asarray(rgb, dtype=np.uint8), axis=-1)


def _centroid(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


# ---------------------------------------------------------------------------------------------------------------------
# classification dataset
# ---------------------------------------------------------------------------------------------------------------------
def test_classification_columns_and_labels(train_ds):
    assert train_ds.column_names == ["video", "label", "caption", "objects"]
    assert train_ds.features["label"].names == list(M.DIRECTIONS)
    row = train_ds[0]
    assert isinstance(row["video"], np.ndarray) and row["video"].dtype == np.uint8
    assert row["video"].shape == (16, 32, 32, 3)
    assert train_ds[:5]["video"].shape == (5, 16, 32, 32, 3)
    n_objects = set()
    for row in train_ds:
        movers = [o for o in row["objects"] if o["motion"] != "still"]
        assert len(movers) == 1  # exactly one moving object: the direction is well defined
        assert train_ds.features["label"].int2str(row["label"]) == movers[0]["motion"]
        assert row["caption"] == M.clip_caption(row["objects"])
        n_objects.add(len(row["objects"]))
    assert n_objects == {1, 2}  # distractors (still objects) occur
    # balanced: every label once per block of four clips
    labels = np.asarray(train_ds["label"])
    for start in range(0, N_TRAIN, 4):
        assert sorted(labels[start:start + 4]) == [0, 1, 2, 3]
    assert np.array_equal(np.bincount(np.asarray(train_ds["label"])), [N_TRAIN // 4] * 4)


def test_caption_text():
    base = dict(x=10.0, y=10.0, start="top left", radius=4.0, rgb_jitter=[0, 0, 0], event="none", event_frame=-1,
                new_color="")
    red = dict(base, shape="circle", color="red", motion="left", speed="slow", step=0.5)
    blue = dict(base, shape="square", color="blue", motion="still", speed="none", step=0.0, event="color_change",
                event_frame=5, new_color="green")
    assert M.clip_caption([red]) == "a red circle moves left slowly."
    assert M.clip_caption([red, blue]) == "a red circle moves left slowly. a blue square stays still and turns green."
    assert M.clip_caption([dict(red, event="appear", event_frame=4, speed="fast")]) == \
        "a red circle appears and moves left quickly."


def test_include_still_labels():
    ds = M.make_moving_shapes_dataset(10, seed=1, include_still=True, max_objects=2)
    assert ds.features["label"].names == list(M.MOTIONS)
    assert np.array_equal(np.bincount(ds["label"], minlength=5), [2, 2, 2, 2, 2])
    for row in ds:
        movers = [o["motion"] for o in row["objects"] if o["motion"] != "still"]
        assert movers == ([] if row["label"] == 4 else [M.MOTIONS[row["label"]]])
        if row["label"] == 4:  # nothing moves: every frame equals the first
            assert np.array_equal(row["video"], np.broadcast_to(row["video"][:1], row["video"].shape))


# ---------------------------------------------------------------------------------------------------------------------
# the pixels: motion, placement, events
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_frames,image_size,speeds", [(16, 32, M.SPEEDS), (8, 48, {"slow": 0.75, "fast": 2.5})])
def test_objects_move_as_stated(num_frames, image_size, speeds):
    ds = M.make_moving_shapes_dataset(24, seed=2, num_frames=num_frames, image_size=image_size, max_objects=3,
                                      speeds=speeds)
    steps = set()
    for row in ds:
        video = row["video"]
        for o in row["objects"]:
            mask = _mask(video, M.object_rgb(o, 0))
            assert mask.sum(axis=(1, 2)).min() >= 12  # drawn whole at every frame (no event in this dataset)
            (x0, y0), (x1, y1) = _centroid(mask[0]), _centroid(mask[-1])
            vx, vy = M.DIRECTION_VECTORS[o["motion"]]
            travel = o["step"] * (num_frames - 1)
            # the centroid of the object's colour moves by step x frames in the stated direction
            assert abs((x1 - x0) - vx * travel) <= 1.0 and abs((y1 - y0) - vy * travel) <= 1.0, o
            if o["motion"] != "still":
                steps.add(o["step"])
                assert travel >= 5 and o["step"] == speeds[o["speed"]]
            else:
                assert np.array_equal(mask[0], mask[-1])
            # it sits where the spec says: the frame-0 centroid lies within a pixel of (x, y) (triangle: lower)
            dy = {"triangle": -0.1 * o["radius"]}.get(o["shape"], 0.0)
            assert abs(x0 + 0.5 - o["x"]) <= 1.0 and abs(y0 + 0.5 - o["y"] + dy) <= 1.5
    assert steps == set(speeds.values())


def test_objects_stay_inside_and_apart(qa_clips):
    for clip, video in qa_clips:
        covered = np.zeros(video.shape[:3], dtype=np.int64)
        for o in clip:
            for t in range(video.shape[0]):
                if not M.is_visible(o, t):
                    continue
                mask = _mask(video[t], M.object_rgb(o, t))
                cx, cy = M.object_center(o, t)
                ys, xs = np.nonzero(mask)
                assert len(xs) >= 12
                # inside its square, which lies inside the frame
                assert np.all(np.abs(xs + 0.5 - cx) <= o["radius"] + 1)
                assert np.all(np.abs(ys + 0.5 - cy) <= o["radius"] + 1)
                assert o["radius"] < cx < 32 - o["radius"] and o["radius"] < cy < 32 - o["radius"]
                covered[t] += mask
        # every non-background pixel belongs to exactly one object (no overlap, nothing else drawn)
        foreground = np.any(video != np.asarray(S.BACKGROUND, dtype=np.uint8), axis=-1)
        assert np.array_equal(covered, foreground.astype(np.int64))


def test_events_happen_at_the_stated_frame(qa_clips):
    seen = set()
    for clip, video in qa_clips:
        for o in clip:
            if o["event"] == "none":
                assert o["event_frame"] == -1 and o["new_color"] == ""
                continue
            f = o["event_frame"]
            assert 4 <= f <= 12  # inside [T // 4, T - T // 4]
            old = _mask(video, M.object_rgb(o, 0)).sum(axis=(1, 2))
            if o["event"] == "color_change":
                new = _mask(video, M.object_rgb(o, f)).sum(axis=(1, 2))
                assert o["new_color"] != o["color"] and M.color_at(o, f) == o["new_color"]
                assert np.all(old[:f] > 0) and np.all(old[f:] == 0)
                assert np.all(new[:f] == 0) and np.all(new[f:] > 0)
            elif o["event"] == "appear":
                assert np.all(old[:f] == 0) and np.all(old[f:] > 0)
            else:
                assert np.all(old[:f] > 0) and np.all(old[f:] == 0)
            seen.add(o["event"])
        for t in range(16):  # a colour names one object at every frame
            at_t = [M.color_at(o, t) for o in clip]
            assert len(set(at_t)) == len(at_t)
    assert seen == {"color_change", "appear", "disappear"}


# ---------------------------------------------------------------------------------------------------------------------
# determinism, splits
# ---------------------------------------------------------------------------------------------------------------------
def test_deterministic_for_a_seed(train_ds):
    again = M.make_moving_shapes_dataset(N_TRAIN, seed=0, max_objects=2)
    assert again["objects"] == train_ds["objects"] and again["label"] == train_ds["label"]
    assert np.array_equal(again[:]["video"], train_ds[:]["video"])
    other = M.make_moving_shapes_dataset(N_TRAIN, seed=1, max_objects=2)
    assert other["caption"] != train_ds["caption"]
    prefix = M.make_moving_shapes_dataset(30, seed=0, max_objects=2)  # fewer clips: a prefix
    assert prefix["objects"] == train_ds["objects"][:30]
    assert np.array_equal(prefix[:]["video"], train_ds[:30]["video"])


def test_splits_disjoint(train_ds, test_ds):
    assert all(M.is_held_out_clip(o) for o in test_ds["objects"])
    assert not any(M.is_held_out_clip(o) for o in train_ds["objects"])
    test_keys = {M.clip_key(o) for o in test_ds["objects"]}
    assert len(test_keys) >= N_TEST // 2  # varied, not one kind of clip
    # disjoint for other seeds, sizes and settings too: the held-out rule does not depend on them
    big_train = M.generate_clips(1500, seed=5, max_objects=2, task="qa", event_prob=0.3)
    other_test = M.generate_clips(150, seed=7, split="test", max_objects=2, task="qa", event_prob=0.3)
    train_keys = {M.clip_key(c) for c in big_train}
    assert not train_keys & (test_keys | {M.clip_key(c) for c in other_test})
    # test labels are balanced too, and each part of a test clip occurs in training
    assert np.array_equal(np.bincount(test_ds["label"]), [N_TEST // 4] * 4)
    looks = {(o["shape"], o["color"]) for c in big_train for o in c}
    moves = {(o["motion"], o["speed"], o["start"]) for c in big_train for o in c}
    for clip in test_ds["objects"]:
        for o in clip:
            assert (o["shape"], o["color"]) in looks and (o["motion"], o["speed"], o["start"]) in moves


# ---------------------------------------------------------------------------------------------------------------------
# questions
# ---------------------------------------------------------------------------------------------------------------------
def _expected_answer(clip, question: str, num_frames: int = 16) -> str:
    """Answers the question from the objects alone (an independent reading of the templates)."""
    def only(values):
        assert len(values) == 1, (question, values)
        return values[0]

    words = question.rstrip("?").split()
    by_name = {}
    for o in clip:
        by_name.setdefault(o["shape"], []).append(o)
        if o["event"] != "color_change":
            by_name.setdefault(f"{o['color']} {o['shape']}", []).append(o)
    if question.startswith("which way does the "):
        return only(by_name[" ".join(words[4:-1])])["motion"]
    if question.startswith("how fast does the "):
        return only(by_name[" ".join(words[4:-1])])["speed"]
    if question.startswith("what color does the "):
        return only(by_name[words[4]])["new_color"]
    if question == "what color is the moving shape?":
        return only([o for o in clip if o["motion"] != "still"])["color"]
    if question.startswith("what color is the "):
        return only(by_name[words[4]])["color"]
    if question == "what shape is moving?":
        return only([o for o in clip if o["motion"] != "still"])["shape"]
    if question.startswith("what shape is "):
        return only([o for o in clip if o["color"] == words[3] and o["event"] != "color_change"])["shape"]
    if question in ("what shape appears?", "what shape disappears?"):
        return only([o for o in clip if o["event"] == words[2][:-1]])["shape"]
    if question == "how many shapes move?":
        return M.COUNT_WORDS[sum(o["motion"] != "still" for o in clip)]
    if question.startswith("how many shapes are there at the "):
        t = 0 if words[-1] == "start" else num_frames - 1
        return M.COUNT_WORDS[sum(M.is_visible(o, t) for o in clip)]
    raise AssertionError(f"unknown question template {question!r}")


def test_every_answer_is_correct_and_one_word(qa_clips):
    types_seen, answers = set(), set()
    vocab = {"direction": M.DIRECTIONS, "speed": tuple(M.SPEEDS), "color": S.COLORS, "shape": S.SHAPES,
             "count": M.COUNT_WORDS}
    for clip, video in qa_clips:
        qa = M.clip_questions_with_types(clip)
        assert len({q for q, _, _ in qa}) == len(qa) >= 3
        for q, a, t in qa:
            assert a == _expected_answer(clip, q) and a in vocab[t] and " " not in a
            types_seen.add(t)
            answers.add(a)
        # the count at the end is what the last frame shows: one colour per visible object
        end = dict((q, a) for q, a, _ in qa)["how many shapes are there at the end?"]
        shown = sum(_mask(video[-1], M.object_rgb(o, 15)).any() for o in clip)
        assert end == M.COUNT_WORDS[shown]
    assert types_seen == set(M.CLIP_QUESTION_TYPES)
    assert {"left", "right", "up", "down", "slow", "fast", "zero"} <= answers


def test_qa_dataset_rows():
    qa = M.make_moving_shapes_qa_dataset(12, seed=4, max_objects=2)
    assert qa.column_names == ["video", "question", "answer", "question_type", "caption", "clip"]
    clips = M.generate_clips(12, seed=4, max_objects=2, task="qa", event_prob=0.5)
    assert len(qa) == sum(len(M.clip_questions_with_types(c)) for c in clips)
    assert sorted(set(qa["clip"])) == list(range(12))
    for row in qa.select(range(0, len(qa), 5)):
        clip = clips[row["clip"]]
        assert row["answer"] == _expected_answer(clip, row["question"])
        assert row["caption"] == M.clip_caption(clip)
        assert np.array_equal(row["video"], M.render_clip(clip))
    again = M.make_moving_shapes_qa_dataset(12, seed=4, max_objects=2)
    assert again["question"] == qa["question"]  # seeded order
    few = M.make_moving_shapes_qa_dataset(12, seed=4, max_objects=2, max_questions=2,
                                          question_types=["direction", "count"])
    assert set(few["question_type"]) == {"direction", "count"} and len(few) <= 24
    assert np.all(np.bincount(few["clip"]) <= 2)


# ---------------------------------------------------------------------------------------------------------------------
# argument errors
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(num_frames=1), "num_frames must be >= 2"),
    (dict(image_size=8), "image_size must be >= 16"),
    (dict(max_objects=0), "max_objects must be in 1..4"),
    (dict(max_objects=5), "max_objects must be in 1..4"),
    (dict(split="val"), "Unknown split 'val'"),
    (dict(speeds={"slow": 0.0}), r"speeds\['slow'\] must be a positive"),
    (dict(speeds={"medium": 1.0}), "Unknown speed names"),
    (dict(event_prob=1.5), "event_prob must be a probability"),
    (dict(num_frames=64), "travels 63.0 px"),
    (dict(seed=-1), "seed must be >= 0"),
    (dict(num_clips=0), "num_clips must be >= 1"),
    (dict(num_clips=2.5), "num_clips must be an integer"),
])
def test_bad_arguments_raise(kwargs, match):
    args = dict(num_clips=4, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        M.make_moving_shapes_dataset(**args)


def test_bad_qa_arguments_raise():
    with pytest.raises(ValueError, match="Unknown question types"):
        M.make_moving_shapes_qa_dataset(2, question_types=["colour"])
    with pytest.raises(ValueError, match="max_questions must be >= 1"):
        M.make_moving_shapes_qa_dataset(2, max_questions=0)
    with pytest.raises(ValueError, match="No test clip with a '(left|right|up|down)' object in 2 draws"):
        M.make_moving_shapes_dataset(40, split="test", max_redraws=2)  # about 1 draw in 10 is held out


# ---------------------------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------------------------
def test_tokenizer_covers_the_data(tmp_path, monkeypatch, qa_clips):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = M.build_moving_shapes_tokenizer()
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.image_token_id == 4 and tok.video_token_id == 5
    assert len(tok) == 6 + len(M.moving_shapes_vocabulary())
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded.get_vocab() == tok.get_vocab() and loaded.video_token_id == 5
    texts = []
    for clip, _ in qa_clips:
        texts.append(M.clip_caption(clip))
        texts += [t for q, a, _ in M.clip_questions_with_types(clip) for t in (q, a)]
    for text, ids in zip(texts, loaded(texts)["input_ids"]):
        assert loaded.unk_token_id not in ids, text
        assert loaded.decode(ids) == text
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what shape is moving?"}]},
            {"role": "assistant", "content": "circle"}]
    text = loaded.apply_chat_template(chat, tokenize=False)
    assert text == "<s>user: <video> what shape is moving? assistant: circle</s>"
    assert 3 not in loaded(text)["input_ids"] and loaded(text)["input_ids"].count(5) == 1
    # the shapes tokenizer is unchanged by the vocabulary argument
    assert S.build_shapes_tokenizer().get_vocab() == S.build_shapes_tokenizer(
        vocabulary=S.shapes_vocabulary()).get_vocab()
