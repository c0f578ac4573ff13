"""A Marian folder written by `export_marian` as a CTranslate2 model (`convert_ctranslate2`).

The conversion is CTranslate2's own `TransformersConverter`, with one change to how it reads a
Marian model. Its `MarianMTLoader` (CTranslate2 4.8.5, checked with transformers 5.25) is written for
the OPUS-MT models that Transformers converted from Marian NMT, and two of its assumptions do not
hold for attnlab's models, whatever the transformers version:

- it starts the decoder from a zero vector (`start_from_zero_embedding`): OPUS-MT decoders start
  from `<pad>`, whose embedding is zero, while attnlab's start from `<s>`, a trained embedding;
- it drops the last row of every vocabulary matrix, taking it to be the `<pad>` that Transformers
  appended to OPUS-MT vocabularies: attnlab's `<pad>` is id 0, and the last row is a real piece
  (CTranslate2 then refuses the model: "vocabulary has size V but the model expected V - 1").

`AttnlabMarianLoader` is CTranslate2's loader without those two steps (BartLoader's, which both
derive from), starting the decoder from `decoder_start_token_id`, and registering the target
vocabulary apart when the export has two. It is registered for MarianConfig during the conversion
only, and only for a folder `export_marian` wrote (its attnlab_export.json), so other Marian models
still convert as CTranslate2 intends.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError
from .marian import MARKER, check_out_dir, require_transformers


def require_ctranslate2():
    try:
        import ctranslate2
        import ctranslate2.converters.transformers as ct2_transformers
    except ImportError:
        raise ConfigError("format=ctranslate2 needs ctranslate2: pip install 'attnlab[export]'") from None
    return ctranslate2, ct2_transformers


def attnlab_marian_loader(ct2_transformers):
    """CTranslate2's MarianMTLoader for the models export_marian writes (module docstring)."""
    bart = ct2_transformers.BartLoader

    class AttnlabMarianLoader(ct2_transformers.MarianMTLoader):
        def get_model_spec(self, model):
            model.config.normalize_before = False  # post-norm, as MarianMTLoader sets
            model.config.normalize_embedding = False
            return bart.get_model_spec(self, model)  # without _remove_pad_weights

        def set_decoder(self, spec, decoder):
            bart.set_decoder(self, spec, decoder)  # without start_from_zero_embedding

        def set_config(self, config, model, tokenizer):
            super().set_config(config, model, tokenizer)
            config.decoder_start_token = tokenizer.convert_ids_to_tokens(model.config.decoder_start_token_id)

        def __call__(self, model, tokenizer):
            spec = self.get_model_spec(model)
            self.set_config(spec.config, model, tokenizer)
            # vocab.json and target_vocab.json as read (MarianTokenizer.get_tgt_vocab fails in transformers
            # 5.25: it merges the id -> token map of added tokens as if it were token -> id).
            source = tokenizer.encoder
            target = tokenizer.target_encoder if tokenizer.separate_vocabs else source
            spec.register_source_vocabulary(sorted(source, key=source.get))
            spec.register_target_vocabulary(sorted(target, key=target.get))
            return spec

    return AttnlabMarianLoader()


@contextmanager
def loader_for_marian(ct2_transformers):
    loaders = ct2_transformers._MODEL_LOADERS
    previous = loaders["MarianConfig"]
    loaders["MarianConfig"] = attnlab_marian_loader(ct2_transformers)
    try:
        yield
    finally:
        loaders["MarianConfig"] = previous


def convert_ctranslate2(
    hf_dir: str | Path, out_dir: str | Path, quantization: str = "float32", overwrite: bool = False
) -> Path:
    """Convert the Marian folder `hf_dir` (from export_marian) into a CTranslate2 model in `out_dir`,
    with source.spm and target.spm beside it. `quantization`: CTranslate2's weight type (float32,
    int8, int8_float32, int16, float16, bfloat16, ...). Returns `out_dir`."""
    _, ct2_transformers = require_ctranslate2()
    require_transformers()
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

    hf_dir, out = Path(hf_dir), Path(out_dir)
    if quantization not in ACCEPTED_MODEL_TYPES:
        raise ConfigError(f"quantization={quantization!r} is not one of {list(ACCEPTED_MODEL_TYPES)}")
    if not (hf_dir / MARKER).is_file():
        raise ConfigError(
            f"{hf_dir} is not a folder attnlab-export format=hf wrote (no {MARKER}); other Marian models "
            "convert with CTranslate2's own ct2-transformers-converter"
        )
    check_out_dir(out, overwrite)
    converter = ct2_transformers.TransformersConverter(str(hf_dir), copy_files=["source.spm", "target.spm", MARKER])
    with loader_for_marian(ct2_transformers), warnings.catch_warnings():
        # MarianTokenizer asks for sacremoses, which only its unused punctuation normaliser needs.
        warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
        converter.convert(str(out), quantization=quantization, force=True)
    return out
