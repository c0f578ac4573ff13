"""attnlab: an experiment platform for the encoder-decoder transformer."""

__version__ = "0.1.0"
