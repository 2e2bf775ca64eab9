"""Retrieval recall@k and mean rank as an ``evaluate`` metric module, shipped with ssmvl so it loads by local path
without network:

    import evaluate
    retrieval = evaluate.load("/path/to/ssmvl/training/metrics/retrieval.py")
    # one row of scores per query (e.g. an image) over all candidates (e.g. captions); reference = the correct column
    retrieval.compute(predictions=[[0.9, 0.1, 0.0], [0.2, 0.1, 0.7]], references=[0, 1], k=(1, 2))
    # {'recall@1': 0.5, 'recall@2': 0.5, 'mean_rank': 2.0, 'median_rank': 2.0}

For image-to-caption retrieval pass ``similarity.tolist()`` (images x captions) with ``references=range(n)``; for
caption-to-image pass the transpose. The rank of a query's correct candidate is 1 + the number of OTHER candidates
scoring at least as high (ties count against the query, so constant scores never look good). Scores travel as
float64; rows may differ in length.
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Recall@k is the fraction of queries whose correct candidate is among the k highest-scoring candidates; the mean
(median) rank is the average (median) 1-based rank of the correct candidate. Ties are pessimistic: the rank is
1 + the number of other candidates with a score greater than or equal to the correct one's.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row of scores per query over its candidates (higher = better),
        e.g. a row of an image-caption similarity matrix.
    references (`list` of `int`): for each query, the index of its correct candidate in the row.
    k (`int` or `tuple` of `int`, defaults to (1, 5)): the cut-offs reported as "recall@k".
Returns:
    recall@k (`float`): in [0, 1] for each k.
    mean_rank (`float`): >= 1 (1.0 = always first).
    median_rank (`float`): >= 1.
Examples:
    >>> retrieval = evaluate.load("training/metrics/retrieval.py")
    >>> retrieval.compute(predictions=[[0.9, 0.1, 0.0], [0.2, 0.1, 0.7]], references=[0, 1], k=(1, 2))
    {'recall@1': 0.5, 'recall@2': 0.5, 'mean_rank': 2.0, 'median_rank': 2.0}
"""

_CITATION = """
@inproceedings{radford2021learning,
  title={Learning Transferable Visual Models From Natural Language Supervision},
  author={Radford, Alec and Kim, Jong Wook and Hallacy, Chris and others},
  booktitle={International Conference on Machine Learning},
  pages={8748--8763},
  year={2021}
}
"""


def ranks_of_references(predictions, references) -> np.ndarray:
    """1-based rank of each reference in its row of scores (ties count against it; NaN is the lowest score)."""
    ranks = []
    for i, (row, ref) in enumerate(zip(predictions, references)):
        row = np.nan_to_num(np.asarray(row, dtype=np.float64), nan=-np.inf)  # NaN scores rank last
        ref = int(ref)
        if not 0 <= ref < row.size:
            raise ValueError(f"Query {i}: reference {ref} is outside its {row.size} candidates")
        ranks.append(int(np.sum(row >= row[ref])))  # = 1 (the reference) + the others scoring at least as high
    return np.asarray(ranks, dtype=np.int64)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Retrieval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64")),
                                        "references": datasets.Value("int64")}),
            reference_urls=["https://arxiv.org/abs/2103.00020"],
        )

    def _compute(self, predictions, references, k=(1, 5)):
        if len(predictions) != len(references):
            raise ValueError(f"{len(predictions)} score rows but {len(references)} references")
        cutoffs = (k,) if isinstance(k, (int, np.integer)) else tuple(k)
        if not cutoffs or any(int(c) < 1 for c in cutoffs):
            raise ValueError(f"k must be positive integers, got {k!r}")
        ranks = ranks_of_references(predictions, references)
        result = {f"recall@{int(c)}": float(np.mean(ranks <= int(c))) if ranks.size else 0.0 for c in cutoffs}
        result["mean_rank"] = float(np.mean(ranks)) if ranks.size else 0.0
        result["median_rank"] = float(np.median(ranks)) if ranks.size else 0.0
        return result
