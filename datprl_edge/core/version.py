"""The toolkit's version, at the bottom of the package so that every stage can record it."""

__version__ = "0.1.0"
