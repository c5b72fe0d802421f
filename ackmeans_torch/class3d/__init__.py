"""3D classification of particles with known poses (``run.py`` the front door, ``model.py`` the
E- and M-step as a dissimilarity of the clustering loop, ``outputs.py`` what a run writes)."""

from ackmeans_torch.class3d.run import Class3DOptions, Class3DResult, Class3DRun, run_class3d

__all__ = ["Class3DOptions", "Class3DResult", "Class3DRun", "run_class3d"]
