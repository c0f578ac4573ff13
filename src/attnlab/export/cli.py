"""`attnlab-export ckpt=... format=hf|ctranslate2 out=...`: a checkpoint as a Hugging Face Marian
folder, or as a CTranslate2 model converted from one (docs/export.md).

Everything a user can get wrong is checked before the checkpoint is read where it can be (format,
quantization, the out folder, a missing extra), and every refusal is one line naming the key.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from ..checkpoint import load_for_inference
from ..cli import explain_and_exit
from ..errors import ConfigError
from ..translate import ERRORS, command_decode, run_decode_settings
from .ctranslate2 import convert_ctranslate2, require_ctranslate2
from .marian import check_out_dir, export_marian, require_transformers

FORMATS = ("hf", "ctranslate2")


def export(cfg: DictConfig) -> Path:
    """Export `cfg.ckpt` as `cfg.format` into `cfg.out`; returns the folder written."""
    if cfg.format not in FORMATS:
        raise ConfigError(f"format={cfg.format} is not one of {list(FORMATS)}")
    command_decode(cfg.decode)
    require_transformers().utils.logging.disable_progress_bar()  # one line of output, not three bars
    if cfg.format == "ctranslate2":
        require_ctranslate2()
        from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

        if cfg.quantization not in ACCEPTED_MODEL_TYPES:
            raise ConfigError(f"quantization={cfg.quantization} is not one of {list(ACCEPTED_MODEL_TYPES)}")
    out = Path(to_absolute_path(cfg.out))
    check_out_dir(out, cfg.overwrite)
    # An averaged checkpoint and the intermediate Marian folder go to a temporary folder, never into out.
    with tempfile.TemporaryDirectory(prefix="attnlab-export-") as scratch:
        trained = load_for_inference(to_absolute_path(cfg.ckpt), cfg.average_last, scratch)
        settings, source = run_decode_settings(cfg.decode, trained.hparams)
        if cfg.format == "hf":
            export_marian(trained, out, settings, overwrite=cfg.overwrite)
        else:
            hf_dir = export_marian(trained, Path(scratch) / "marian", settings)
            convert_ctranslate2(hf_dir, out, cfg.quantization, overwrite=cfg.overwrite)
    said = f"attnlab-export: {cfg.format} model written to {out}"
    if cfg.format == "hf":
        said += f"; generation_config.json: {settings.describe()} (from {source})"
    print(said, file=sys.stderr)
    return out


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        export(cfg)
    except ERRORS as err:
        explain_and_exit(err, "attnlab-export")


if __name__ == "__main__":
    main()
