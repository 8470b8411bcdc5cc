"""nfbench's version (in a module of its own: records and saved models name it without
importing the package's lazy attributes)."""

__version__ = "0.1.0"
