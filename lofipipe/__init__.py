"""lofipipe: TAL preprocessing, feature extraction and training pipelines on Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lofipipe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
