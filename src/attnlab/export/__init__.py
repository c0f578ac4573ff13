"""Trained models for other runtimes: a Hugging Face `MarianMTModel` folder (`export_marian`), and
from it a CTranslate2 model (`convert_ctranslate2`, through CTranslate2's own converter).

transformers and ctranslate2 are the `export` extra: each is imported when a function needs it, so
`attnlab.export` itself imports without them and a missing one is a ConfigError naming the extra.
"""

from .ctranslate2 import convert_ctranslate2
from .marian import check_marian, export_marian

__all__ = ["check_marian", "convert_ctranslate2", "export_marian"]
