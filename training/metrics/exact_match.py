"""Exact match of short text answers as an ``evaluate`` metric module, shipped with ssmvl so it loads by local path
without network:

    import evaluate
    exact_match = evaluate.load("/path/to/ssmvl/training/metrics/exact_match.py")
    exact_match.compute(predictions=["Red.", "top left"], references=["red", "top right"])  # {'exact_match': 0.5}

Both sides are normalised before comparing: lower-cased, runs of whitespace collapsed to one space, leading and
trailing whitespace removed, then trailing punctuation (any of ``.,!?;:``) removed (and whitespace again), so
``" Top  Left. "`` equals ``"top left"``. Nothing else is changed (no article or synonym handling).
"""

import re

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Exact match is the fraction of predictions equal to their reference after normalisation (lower-case, whitespace
collapsed and stripped, trailing punctuation ".,!?;:" removed). Meant for short fixed answers such as the shapes
data set's "red", "circle", "top left", "two".
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): predicted answers.
    references (`list` of `str`): ground-truth answers.
Returns:
    exact_match (`float`): in [0, 1], the fraction of normalised predictions equal to their normalised reference
        (0.0 for empty inputs).
Examples:
    >>> exact_match = evaluate.load("training/metrics/exact_match.py")
    >>> exact_match.compute(predictions=["Red.", " top  left", "circle"], references=["red", "top left", "square"])
    {'exact_match': 0.6666666666666666}
"""

_CITATION = """
@inproceedings{rajpurkar-etal-2016-squad,
  title={{SQ}u{AD}: 100,000+ Questions for Machine Comprehension of Text},
  author={Rajpurkar, Pranav and Zhang, Jian and Lopyrev, Konstantin and Liang, Percy},
  booktitle={Proceedings of the 2016 Conference on Empirical Methods in Natural Language Processing},
  pages={2383--2392},
  year={2016}
}
"""

_TRAILING_PUNCTUATION = ".,!?;:"


def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, strip, drop trailing punctuation (".,!?;:") and strip again."""
    text = re.sub(r"\s+", " ", str(text).lower()).strip()
    return text.rstrip(_TRAILING_PUNCTUATION + " ")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}),
            reference_urls=["https://huggingface.co/spaces/evaluate-metric/exact_match"],
        )

    def _compute(self, predictions, references):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
        correct = np.asarray([normalize_answer(p) == normalize_answer(r) for p, r in zip(predictions, references)],
                             dtype=np.float64)
        return {"exact_match": float(np.mean(correct)) if correct.size else 0.0}
