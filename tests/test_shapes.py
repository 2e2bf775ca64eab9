"""Generated shapes scenes (training/shapes.py), the word-level tokenizer and the local exact-match / retrieval
metrics (training/metrics/exact_match.py, retrieval.py)."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest

from ssmvl.training import shapes as S

METRICS = Path(S.__file__).resolve().parent / "metrics"
N_TRAIN, N_TEST = 200, 100


@pytest.fixture(scope="module")
def train_ds():
    return S.make_shapes_dataset(N_TRAIN, seed=0, split="train")


@pytest.fixture(scope="module")
def test_ds():
    return S.make_shapes_dataset(N_TEST, seed=0, split="test")


@pytest.fixture(scope="module")
def tokenizer():
    return S.build_shapes_tokenizer()


def _png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _expected_answer(objects, question):
    """Re-derives the answer from the objects by parsing the question; asserts it is unique in the scene."""
    def only(matches):
        assert len(matches) == 1, f"{question!r} does not have a unique answer in {objects}"
        return matches[0]

    q = question[:-1]  # drop "?"
    assert question.endswith("?")
    if q == "how many shapes are there":
        return S.NUMBER_WORDS[len(objects) - 1]
    if q.startswith("what color is the shape at the "):
        pos = q[len("what color is the shape at the "):]
        return only([o["color"] for o in objects if o["position"] == pos])
    if q.startswith("what color is the "):
        shape = q[len("what color is the "):]
        return only([o["color"] for o in objects if o["shape"] == shape])
    if q.startswith("what shape is at the "):
        pos = q[len("what shape is at the "):]
        return only([o["shape"] for o in objects if o["position"] == pos])
    if q.startswith("what shape is "):
        color = q[len("what shape is "):]
        return only([o["shape"] for o in objects if o["color"] == color])
    if q.startswith("where is the "):
        words = q[len("where is the "):].split()
        if len(words) == 2 and words[1] == "shape":
            return only([o["position"] for o in objects if o["color"] == words[0]])
        if len(words) == 2:
            return only([o["position"] for o in objects if o["color"] == words[0] and o["shape"] == words[1]])
        return only([o["position"] for o in objects if o["shape"] == words[0]])
    raise AssertionError(f"unknown question template {question!r}")


# ---------------------------------------------------------------------------------------------------------------------
# scenes, captions, questions
# ---------------------------------------------------------------------------------------------------------------------
def test_vocabulary_constants():
    assert len(S.COLORS) == 6 and len(S.SHAPES) == 4 and len(S.POSITIONS) == 9
    rgb = np.asarray([S.COLOR_RGB[c] for c in S.COLORS], dtype=np.float64)
    dists = [np.linalg.norm(a - b) for a, b in itertools.combinations(rgb, 2)]
    assert min(dists) > 100  # well separated colours
    assert min(np.linalg.norm(rgb - np.asarray(S.BACKGROUND), axis=1)) > 100


def test_sample_scene_rules():
    rng = np.random.default_rng(0)
    counts = set()
    for _ in range(500):
        objects = S.sample_scene(rng, max_objects=4)
        counts.add(len(objects))
        S.validate_scene(objects)  # distinct cells, distinct (colour, shape)
        assert [o["position"] for o in objects] == sorted((o["position"] for o in objects), key=S.POSITIONS.index)
    assert counts == {1, 2, 3, 4}
    with pytest.raises(ValueError):
        S.validate_scene([{"shape": "circle", "color": "red", "position": "center"},
                          {"shape": "circle", "color": "red", "position": "top left"}])
    with pytest.raises(ValueError):
        S.sample_scene(rng, max_objects=10)


def test_caption_text_and_injective():
    objects = [{"shape": "square", "color": "blue", "position": "center"},
               {"shape": "circle", "color": "red", "position": "top left"}]
    assert S.caption(objects) == "a red circle at the top left and a blue square at the center."
    three = objects + [{"shape": "cross", "color": "white", "position": "bottom right"}]
    assert S.caption(three) == ("a red circle at the top left, a blue square at the center and "
                                "a white cross at the bottom right.")
    rng = np.random.default_rng(1)
    by_caption = {}
    for _ in range(2000):
        objects = S.sample_scene(rng, 3)
        by_caption.setdefault(S.caption(objects), set()).add(S.scene_key(objects))
    assert all(len(keys) == 1 for keys in by_caption.values())  # one caption <-> one scene


def test_questions_example():
    objects = [{"shape": "circle", "color": "red", "position": "top left"},
               {"shape": "circle", "color": "blue", "position": "center"}]
    qa = dict(S.questions(objects))
    assert qa["where is the red circle?"] == "top left"
    assert qa["what shape is at the center?"] == "circle"
    assert qa["what color is the shape at the top left?"] == "red"
    assert qa["how many shapes are there?"] == "two"
    assert "what color is the circle?" not in qa and "where is the circle?" not in qa  # two circles: ambiguous
    assert qa["what shape is blue?"] == "circle"
    shuffled = S.questions(objects, rng=np.random.default_rng(0), max_questions=3)
    assert len(shuffled) == 3 and set(shuffled) <= set(S.questions(objects))


def test_every_answer_is_correct_and_unique(train_ds, test_ds):
    types_seen = set()
    for ds in (train_ds, test_ds):
        for row in ds.with_format(None).select_columns(["objects", "questions", "answers", "question_types"]):
            objects = row["objects"]
            assert len(row["questions"]) == len(row["answers"]) == len(row["question_types"]) >= 4
            assert len(set(row["questions"])) == len(row["questions"])
            for q, a, t in zip(row["questions"], row["answers"], row["question_types"]):
                assert a == _expected_answer(objects, q)
                vocab = {"color": S.COLORS, "shape": S.SHAPES, "position": S.POSITIONS, "count": S.NUMBER_WORDS}[t]
                assert a in vocab
                types_seen.add(t)
    assert types_seen == set(S.QUESTION_TYPES)


# ---------------------------------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image_size", [32, 64])
def test_object_colour_at_its_cell(image_size):
    ds = S.make_shapes_dataset(60, seed=3, image_size=image_size, max_objects=3)
    cell = image_size / 3
    checked = 0
    for row in ds:
        image = row["image"]
        assert image.size == (image_size, image_size) and image.mode == "RGB"
        pixels = np.asarray(image, dtype=np.int64)
        occupied = set()
        for o in row["objects"]:
            r, c = divmod(S.POSITIONS.index(o["position"]), 3)
            occupied.add((r, c))
            y, x = int((r + 0.5) * cell), int((c + 0.5) * cell)
            assert np.abs(pixels[y, x] - np.asarray(S.COLOR_RGB[o["color"]])).max() <= S.COLOR_JITTER
            checked += 1
        # shapes stay inside their cells: every non-background pixel centre lies in an occupied cell
        ys, xs = np.nonzero(np.any(pixels != np.asarray(S.BACKGROUND), axis=-1))
        cells = set(zip(((ys + 0.5) // cell).astype(int).tolist(), ((xs + 0.5) // cell).astype(int).tolist()))
        assert cells == occupied
    assert checked >= 100


def test_shapes_differ_in_pixels():
    """The four shapes of one colour in one cell cover different pixel masks (a tiny model can tell them apart)."""
    masks = []
    for shape in S.SHAPES:
        image = S.render_scene([{"shape": shape, "color": "red", "position": "center"}], image_size=32)
        masks.append(np.any(np.asarray(image) != np.asarray(S.BACKGROUND, dtype=np.uint8), axis=-1))
    for a, b in itertools.combinations(masks, 2):
        assert np.sum(a != b) >= 10


def test_jitter_makes_images_differ():
    objects = [{"shape": "square", "color": "green", "position": "bottom left"}]
    plain = np.asarray(S.render_scene(objects))
    assert np.array_equal(plain, np.asarray(S.render_scene(objects)))  # no rng: deterministic, centred
    rng = np.random.default_rng(0)
    jittered = [np.asarray(S.render_scene(objects, rng=rng)) for _ in range(5)]
    assert all(not np.array_equal(j, plain) for j in jittered)
    assert not np.array_equal(jittered[0], jittered[1])


# ---------------------------------------------------------------------------------------------------------------------
# datasets: determinism, splits
# ---------------------------------------------------------------------------------------------------------------------
def test_columns(train_ds):
    assert train_ds.column_names == ["image", "caption", "objects", "questions", "answers", "question_types"]
    assert len(train_ds) == N_TRAIN
    row = train_ds[0]
    assert row["caption"] == S.caption(row["objects"])
    assert set(row["objects"][0]) == {"shape", "color", "position"}


def test_deterministic_for_a_seed(train_ds):
    again = S.make_shapes_dataset(N_TRAIN, seed=0, split="train")
    assert again["caption"] == train_ds["caption"] and again["questions"] == train_ds["questions"]
    for a, b in zip(again.select(range(20)), train_ds.select(range(20))):
        assert _png_bytes(a["image"]) == _png_bytes(b["image"])
    other = S.make_shapes_dataset(N_TRAIN, seed=1, split="train")
    assert other["caption"] != train_ds["caption"]
    prefix = S.make_shapes_dataset(50, seed=0, split="train")  # fewer scenes: a prefix
    assert prefix["caption"] == train_ds["caption"][:50]
    assert np.array_equal(np.asarray(prefix[49]["image"]), np.asarray(train_ds[49]["image"]))


def test_splits_disjoint_and_test_distinct(train_ds, test_ds):
    test_keys = {S.scene_key(o) for o in test_ds["objects"]}
    assert len(test_keys) == N_TEST and len(set(test_ds["caption"])) == N_TEST  # captions identify test scenes
    assert all(S.is_held_out(o) for o in test_ds["objects"])
    assert not any(S.is_held_out(o) for o in train_ds["objects"])
    # disjoint for other seeds and sizes too: the held-out rule does not depend on them
    big_train = S.generate_scenes(3000, seed=5, split="train")
    other_test = S.generate_scenes(300, seed=7, split="test")
    assert not {S.scene_key(o) for o in big_train} & (test_keys | {S.scene_key(o) for o in other_test})
    assert not set(train_ds["caption"]) & set(test_ds["caption"])
    # every (colour, shape, position) combination still occurs in training scenes
    combos = {(o["color"], o["shape"], o["position"]) for scene in big_train for o in scene}
    assert len(combos) == len(S.COLORS) * len(S.SHAPES) * len(S.POSITIONS)
    # the test split is not a copy of train's distribution shifted to one kind of scene
    assert {len(o) for o in test_ds["objects"]} == {1, 2}


def test_too_many_distinct_test_scenes_is_an_error():
    with pytest.raises(ValueError, match="No new test scene"):
        S.generate_scenes(200, seed=0, max_objects=1, split="test", max_redraws=2000)  # only ~22 held-out singles


def test_qa_dataset_flattens():
    scenes = S.make_shapes_dataset(20, seed=2, split="test")
    qa = S.make_shapes_qa_dataset(20, seed=2, split="test")
    assert qa.column_names == ["image", "question", "answer", "question_type", "caption", "scene"]
    assert len(qa) == sum(len(q) for q in scenes["questions"])
    for row in qa.select(range(0, len(qa), 7)):
        scene = scenes[row["scene"]]
        assert row["caption"] == scene["caption"]
        assert row["answer"] == _expected_answer(scene["objects"], row["question"])
        assert np.array_equal(np.asarray(row["image"]), np.asarray(scene["image"]))
    attrs = S.make_shapes_qa_dataset(20, seed=2, split="test", question_types=("color", "shape", "position"))
    assert "count" not in set(attrs["question_type"]) and len(attrs) == len(qa) - 20


# ---------------------------------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------------------------------
def test_tokenizer_special_ids(tokenizer):
    ids = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    assert ids == (0, 1, 2, 3)
    assert tokenizer.convert_tokens_to_ids("<image>") == 4 == tokenizer.image_token_id
    assert len(tokenizer) == 5 + len(S.shapes_vocabulary())
    assert tokenizer("A Red circle?")["input_ids"] == tokenizer.convert_tokens_to_ids(["a", "red", "circle", "?"])
    assert tokenizer("banana")["input_ids"] == [3]  # out of vocabulary -> <unk>


def test_tokenizer_round_trip_covers_the_data(tokenizer, train_ds, test_ds, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert loaded.get_vocab() == tokenizer.get_vocab()
    texts = list(train_ds["caption"]) + list(test_ds["caption"])
    for ds in (train_ds, test_ds):
        texts += [t for qs in ds["questions"] for t in qs] + [t for ans in ds["answers"] for t in ans]
    for text, ids in zip(texts, loaded(texts)["input_ids"]):
        assert loaded.unk_token_id not in ids, text
        assert loaded.decode(ids) == text  # decoding gives the exact text back
    assert loaded.image_token_id == 4 and loaded.chat_template == S.SHAPES_CHAT_TEMPLATE


def test_chat_template(tokenizer):
    chat = [{"role": "user", "content": "<image> what color is the circle?"}, {"role": "assistant", "content": "red"}]
    text = tokenizer.apply_chat_template(chat, tokenize=False)
    assert text == "<s>user: <image> what color is the circle? assistant: red</s>"
    prompt = tokenizer.apply_chat_template(chat[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s>user: <image> what color is the circle? assistant:"
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is the circle?"}]}]
    assert tokenizer.apply_chat_template(parts, tokenize=False, add_generation_prompt=True) == prompt
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2 and ids.count(4) == 1 and 3 not in ids
    assert ids[len(tokenizer(prompt)["input_ids"]):] == tokenizer("red")["input_ids"] + [2]  # answer then </s>


# ---------------------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def test_exact_match_metric(offline):
    import evaluate

    em = evaluate.load(str(METRICS / "exact_match.py"))
    out = em.compute(predictions=["Red.", " top  left ", "circle", "two!"],
                     references=["red", "top left", "square", "two"])
    assert out == {"exact_match": 0.75}
    assert em.compute(predictions=["top left"], references=["top right"]) == {"exact_match": 0.0}
    assert em.compute(predictions=["a red"], references=["red"]) == {"exact_match": 0.0}  # no article stripping


def test_retrieval_metric(offline):
    import evaluate

    retrieval = evaluate.load(str(METRICS / "retrieval.py"))
    scores = [[0.9, 0.1, 0.0], [0.2, 0.1, 0.7], [0.3, 0.5, 0.4]]
    # ranks of the references (0, 1, 2): 1, 3, 2
    out = retrieval.compute(predictions=scores, references=[0, 1, 2], k=(1, 2))
    assert out == {"recall@1": pytest.approx(1 / 3), "recall@2": pytest.approx(2 / 3), "mean_rank": 2.0,
                   "median_rank": 2.0}
    # a numpy similarity matrix; ties count against the query
    assert retrieval.compute(predictions=np.ones((4, 4), dtype=np.float32), references=range(4), k=1)["recall@1"] == 0.0
    sim = np.eye(5) + 0.01 * np.arange(5)[None, :]
    assert retrieval.compute(predictions=sim, references=range(5))["recall@1"] == 1.0
    out = retrieval.compute(predictions=sim.T[::-1].copy(), references=[4, 3, 2, 1, 0], k=5)
    assert out["recall@5"] == 1.0
    with pytest.raises(ValueError):
        retrieval.compute(predictions=[[0.1, 0.2]], references=[2])
