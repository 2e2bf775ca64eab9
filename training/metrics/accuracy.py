"""Accuracy as an ``evaluate`` metric module, shipped with ssmvl so it loads by local path without network:

    import evaluate
    accuracy = evaluate.load("/path/to/ssmvl/training/metrics/accuracy.py")
    accuracy.compute(predictions=[0, 1, 1], references=[0, 1, 0])  # {'accuracy': 0.666...}

Same interface as the Hub's ``evaluate-metric/accuracy`` (written anew): the fraction of predictions equal to the
references, optionally weighted (``sample_weight``), or the count of correct predictions (``normalize=False``).
"""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Accuracy is the proportion of correct predictions among the total number of cases processed:
Accuracy = (TP + TN) / (TP + TN + FP + FN) for binary labels, and in general the mean of [prediction == reference].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): ground-truth labels.
    normalize (`bool`, defaults to True): if False, return the number of correct predictions instead of the fraction.
    sample_weight (`list` of `float`, *optional*): per-sample weights.
Returns:
    accuracy (`float` or `int`): in [0, 1] when normalize is True (1.0 = all correct), otherwise a count.
Examples:
    >>> accuracy = evaluate.load("training/metrics/accuracy.py")
    >>> accuracy.compute(references=[0, 1, 2, 0, 1, 2], predictions=[0, 1, 1, 2, 1, 0])
    {'accuracy': 0.5}
"""

_CITATION = """
@article{scikit-learn,
  title={Scikit-learn: Machine Learning in {P}ython},
  author={Pedregosa, F. and others},
  journal={Journal of Machine Learning Research},
  volume={12},
  pages={2825--2830},
  year={2011}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        features = [
            datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}),
            datasets.Features({"predictions": datasets.Sequence(datasets.Value("int32")),
                               "references": datasets.Sequence(datasets.Value("int32"))}),
        ]
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=features[0] if self.config_name != "multilabel" else features[1],
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if predictions.shape != references.shape:
            raise ValueError(f"predictions {predictions.shape} and references {references.shape} differ in shape")
        if predictions.ndim > 1:  # multilabel: a sample is correct when all its labels are
            correct = np.all(predictions == references, axis=tuple(range(1, predictions.ndim)))
        else:
            correct = predictions == references
        if sample_weight is not None:
            weights = np.asarray(sample_weight, dtype=np.float64)
            score = float(np.sum(correct * weights))
            return {"accuracy": score / float(np.sum(weights)) if normalize else score}
        if normalize:
            return {"accuracy": float(np.mean(correct)) if correct.size else 0.0}
        return {"accuracy": int(np.sum(correct))}
