"""ackmeans_torch: ACK-means classification of cryo-EM particle images, polar-Fourier alignment
in torch, and REPIC-style consensus particle picking.

The front door for classification, importable from the package itself::

    from ackmeans_torch import ClusterOptions, MRA, QuadraticPenalty, open_source, run_classification
    run = run_classification(open_source("particles.star"), pipeline=MRA(),
                             rule=QuadraticPenalty(beta=0.5), options=ClusterOptions(n_classes=50),
                             out_dir="runs/a")

Names are imported on first use (PEP 562), so ``import ackmeans_torch`` and the command line's
``--help`` do not pay for torch and its companions. Importing the package first also sets
OpenMP's wait policy for shared machines (``runtime.py``).
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from ackmeans_torch.runtime import default_wait_policy

# before any submodule imports torch (and so starts OpenMP): see runtime.py
default_wait_policy()

try:
    __version__ = version("ackmeans_torch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

#: public name -> module that defines it
_EXPORTS = {
    "run_classification": "ackmeans_torch.classify.run",
    "ClassificationRun": "ackmeans_torch.classify.run",
    "Pipeline": "ackmeans_torch.classify.run",
    "MRA": "ackmeans_torch.classify.mra",
    "RFA": "ackmeans_torch.classify.rfa",
    "MSAMRA": "ackmeans_torch.classify.msa",
    "TrainerOptions": "ackmeans_torch.classify.distributed",
    "ClusterOptions": "ackmeans_torch.cluster.options",
    "ACKMeans": "ackmeans_torch.cluster.estimator",
    "QuadraticPenalty": "ackmeans_torch.cluster.penalties",
    "NoPenalty": "ackmeans_torch.cluster.penalties",
    "SpiderFactor": "ackmeans_torch.cluster.penalties",
    "EqualSize": "ackmeans_torch.cluster.penalties",
    "AutogradPenalty": "ackmeans_torch.cluster.penalties",
    "AlignOptions": "ackmeans_torch.ops.align",
    "PreprocessOptions": "ackmeans_torch.data.prepared",
    "open_source": "ackmeans_torch.data.stack",
    "SimulatedSource": "ackmeans_torch.data.simulated",
    "Simulation": "ackmeans_torch.data.simulated",
    "BlobPicker": "ackmeans_torch.pickers.blob",
    "TemplatePicker": "ackmeans_torch.pickers.template",
    "CNNPicker": "ackmeans_torch.pickers.cnn",
    "CommandPicker": "ackmeans_torch.pickers.external",
    "RelionAutopick": "ackmeans_torch.pickers.external",
    "TopazPicker": "ackmeans_torch.pickers.external",
    "LoopOptions": "ackmeans_torch.picking.iterate",
    "run_loop": "ackmeans_torch.picking.iterate",
    "run_pipeline": "ackmeans_torch.pipeline",
    "Micrograph": "ackmeans_torch.micrographs.io",
    "read_micrographs": "ackmeans_torch.micrographs.io",
    "MicrographSimulation": "ackmeans_torch.micrographs.simulate",
    "simulate_micrographs": "ackmeans_torch.micrographs.simulate",
    "ExtractOptions": "ackmeans_torch.micrographs.extract",
    "extract_particles": "ackmeans_torch.micrographs.extract",
    "HeteroSimulation": "ackmeans_torch.sim.hetero",
    "simulate_hetero": "ackmeans_torch.sim.hetero",
    "Classify2D": "ackmeans_torch.trust.classifier",
    "Classify3D": "ackmeans_torch.trust.classifier",
    "reproduce": "ackmeans_torch.trust.reproduce",
    "SplitOptions": "ackmeans_torch.trust.split",
    "exhaustive_split": "ackmeans_torch.trust.split",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ackmeans_torch' has no attribute {name!r}")
