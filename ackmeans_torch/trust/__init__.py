"""Trusting classes: reproducibility across seeds (``reproduce.py``), classification until
exhaustive with a calibrated test for each split (``split.py``) and discrete vs continuous
heterogeneity (``continuous.py``), generic over the classifier (``classifier.py``), with the
files the commands write (``outputs.py``) and replicates run in parallel processes
(``parallel.py``).

Names are imported on first use (PEP 562, as the package does), so the toy-classifier tests and
the command line's ``--help`` do not pay for torch. The function ``reproduce`` is imported from
``ackmeans_torch.trust.reproduce`` (or ``ackmeans_torch``): here the name is its module's."""

from importlib import import_module

#: public name -> module that defines it
_EXPORTS = {
    "Classifier": "ackmeans_torch.trust.classifier",
    "Partition": "ackmeans_torch.trust.classifier",
    "Classify2D": "ackmeans_torch.trust.classifier",
    "Classify3D": "ackmeans_torch.trust.classifier",
    "Replicates": "ackmeans_torch.trust.parallel",
    "CONTINUOUS_MESSAGE": "ackmeans_torch.trust.continuous",
    "Reproducibility": "ackmeans_torch.trust.reproduce",
    "match_runs": "ackmeans_torch.trust.reproduce",
    "SplitOptions": "ackmeans_torch.trust.split",
    "SplitTree": "ackmeans_torch.trust.split",
    "exhaustive_split": "ackmeans_torch.trust.split",
    "split_test": "ackmeans_torch.trust.split",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ackmeans_torch.trust' has no attribute {name!r}")
