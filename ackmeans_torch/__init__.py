"""ackmeans_torch: ACK-means classification of cryo-EM particle images, polar-Fourier alignment
in torch, and REPIC-style consensus particle picking."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ackmeans_torch")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
