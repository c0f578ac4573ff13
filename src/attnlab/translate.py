"""`attnlab-translate ckpt=...`: sentences from stdin or a file -> translations on stdout or a file.

Output format: one translation per input line. With `decode.n_best` > 1, every hypothesis
on its own line as `line<TAB>rank<TAB>score<TAB>text` (line and rank count from 1; score is
the hypothesis' log-probability), best first. Sentences longer than `model.max_len` tokens
are truncated with a warning on stderr; empty input and empty lines are refused.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from .checkpoint import TrainedModel, load_for_inference
from .cli import USER_ERRORS, explain_and_exit
from .data.text import read_lines
from .decoding import DecodeConfig
from .decoding.batch import fit_sources, translate_ids
from .decoding.config import check_keys
from .errors import CheckpointError, ConfigError, CorpusError
from .report.attention_plot import save_attention_png
from .runtime import keep_freed_memory

log = logging.getLogger("attnlab")
ERRORS = (*USER_ERRORS, CheckpointError)


def command_decode(decode: DictConfig | dict) -> dict:
    """This command's `decode.*` (its defaults and what the command line gave) as a plain dict, each
    key and value checked before any checkpoint is read; the rules between keys wait for the run's
    settings (run_decode_settings)."""
    settings = OmegaConf.to_container(decode, resolve=True) if isinstance(decode, DictConfig) else dict(decode)
    check_keys(settings)
    return settings


def command_line_decode_keys() -> set[str]:
    """The `decode.*` keys the user gave on the command line (`decode=<group>` counts as `strategy`);
    empty outside a Hydra app."""
    try:
        task = HydraConfig.get().overrides.task
    except ValueError:
        return set()
    keys = set()
    for override in task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "decode":
            keys.add("strategy")
        elif key.startswith("decode."):
            keys.add(key.split(".")[1])
    return keys


def run_decode_settings(
    decode: DictConfig | dict, hparams: dict, given: set[str] | None = None
) -> tuple[DecodeConfig, str]:
    """The decoding a checkpoint's run was trained (and tested) with, under the keys the user gave on
    the command line; the command's defaults (conf/decode/) fill what the run did not record
    (DecodeConfig.for_checkpoint). Returns the checked settings and where they came from, for the
    printed line."""
    given = command_line_decode_keys() if given is None else given
    run = hparams.get("decode") or {}
    settings = DecodeConfig.for_checkpoint(command_decode(decode), run, given)
    source = "the checkpoint's run" if run else "this command's defaults (the checkpoint records none)"
    if given:
        source += "; command line: " + ", ".join(sorted(given))
    return settings, source


def describe_decoding(settings: DecodeConfig, source: str) -> str:
    """One line: the settings a command decodes with and where they came from."""
    return f"decoding with {settings.describe()} (from {source})"


def check_device(device: str) -> str:
    """`device=...` names a device this torch can use, or a ConfigError says what to do."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ConfigError(f"device={device!r} is not a torch device; use device=cpu or device=cuda") from None
    if kind == "cuda" and not torch.cuda.is_available():
        build = "was built without CUDA" if torch.version.cuda is None else "finds no usable CUDA GPU"
        raise ConfigError(
            f"device={device}: this torch ({torch.__version__}) {build}; use device=cpu, "
            "or install a CUDA build of torch on a machine with a GPU"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device={device}: Apple MPS is not available here; use device=cpu")
    return device


def check_batch_options(cfg: DictConfig) -> None:
    """batch_size and average_last, checked before any checkpoint is read."""
    if not isinstance(cfg.batch_size, int) or cfg.batch_size < 1:
        raise ConfigError(f"batch_size={cfg.batch_size} must be a whole number >= 1 (sentences decoded together)")
    if not isinstance(cfg.average_last, int) or cfg.average_last < 0:
        raise ConfigError(
            f"average_last={cfg.average_last} must be 0 (use ckpt as it is) or the number N >= 1 of last "
            "checkpoints to average"
        )


def writable_file(path: str, key: str, default_name: str | None = None, make_folder: bool = False) -> Path:
    """The file `key=path` will be written to, checked before decoding so no translation is lost:
    a folder is refused (or, with default_name, written into), and its parent folder must exist
    (or, with make_folder, is created)."""
    target = Path(to_absolute_path(path))
    if target.is_dir():
        if default_name is None:
            raise ConfigError(f"{key}={path} is a folder ({target}); give a file name, e.g. {key}={target / 'out.txt'}")
        target = target / default_name
    if make_folder and not target.parent.exists():
        try:
            target.parent.mkdir(parents=True)
        except OSError as err:
            raise ConfigError(f"{key}={path}: cannot create the folder {target.parent} ({err.strerror})") from None
    if not target.parent.is_dir():
        raise ConfigError(f"{key}={path}: the folder {target.parent} does not exist; create it or choose another path")
    if not os.access(target.parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ConfigError(f"{key}={path}: {target} cannot be written (permission denied); choose another path")
    return target


def read_sentences(source: str) -> tuple[list[str], str]:
    """Lines of a file, or of stdin for "-"; refuses no input and empty lines."""
    if source == "-":
        name, lines = "<stdin>", read_stdin()
    else:
        name = to_absolute_path(source)
        lines = read_lines(Path(name))
    return check_sentences(lines, name), name


def read_stdin() -> list[str]:
    """stdin's lines, read as bytes and decoded strictly, like files: bad UTF-8 is named by line."""
    raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise CorpusError(
            f"<stdin>, line {line}: invalid UTF-8 (byte {raw[err.start]:#x}); convert the input to UTF-8"
        ) from None
    lines = text.split("\n")  # not splitlines(): form feeds or U+2028 inside a sentence keep it one line
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def check_sentences(lines: list[str], name: str) -> list[str]:
    """Refuses no lines at all, and empty or whitespace-only lines (naming the first)."""
    if not lines:
        raise CorpusError(f"{name}: no input sentences (expected one sentence a line)")
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            raise CorpusError(f"{name}, line {i}: empty sentence; remove it (output lines match input lines)")
    return lines


def format_translations(results, tokenizer, n_best: int) -> list[str]:
    if n_best == 1:
        return [tokenizer.decode(hyps[0][0]) for hyps in results]
    return [
        f"{line}\t{rank}\t{score:.4f}\t{tokenizer.decode(ids)}"
        for line, hyps in enumerate(results, start=1)
        for rank, (ids, score) in enumerate(hyps, start=1)
    ]


def token_labels(tokenizer, ids: list[int]) -> list[str]:
    specials = {tokenizer.bos_id: "<s>", tokenizer.eos_id: "</s>", tokenizer.pad_id: "<pad>"}
    return [specials.get(i) or tokenizer.decode([i]) or "<unk>" for i in ids]


def save_attention(trained: TrainedModel, src_ids: list[int], hyp_ids: list[int], path: str | Path) -> int:
    """Attention maps of one sentence and its translation (teacher-forced on the output) as a PNG grid."""
    model, cfg = trained.model, trained.model.config
    tgt_in = [cfg.bos_id] + hyp_ids[: cfg.max_len - 1]
    maps = model.attention_maps(torch.tensor([src_ids]), torch.tensor([tgt_in]))
    src_labels = token_labels(trained.src_tokenizer, src_ids)
    tgt_labels = token_labels(trained.tgt_tokenizer, tgt_in)
    return save_attention_png(maps, src_labels, tgt_labels, to_absolute_path(path))


def attention_path(path: str) -> Path:
    """Where `attention_png=path` goes: inside a folder as attention.png; `.png` added when missing
    (matplotlib would add it too, and the log must name the real file)."""
    target = writable_file(path, "attention_png", default_name="attention.png", make_folder=True)
    return target if target.suffix.lower() == ".png" else target.with_name(target.name + ".png")


def translate(cfg: DictConfig) -> list[str]:
    check_batch_options(cfg)
    command_decode(cfg.decode)
    device = check_device(cfg.device)
    # Checked before decoding: a bad output path found afterwards would lose the translations.
    out_path = None if cfg.output == "-" else writable_file(cfg.output, "output")
    png_path = attention_path(cfg.attention_png) if cfg.attention_png else None
    # An averaged model is written to a temporary file, never into the user's working directory.
    with tempfile.TemporaryDirectory(prefix="attnlab-average-") as scratch:
        trained = load_for_inference(to_absolute_path(cfg.ckpt), cfg.average_last, scratch)
    settings, source = run_decode_settings(cfg.decode, trained.hparams)
    print(f"attnlab-translate: {describe_decoding(settings, source)}", file=sys.stderr, flush=True)
    trained.model.to(device)
    sentences, name = read_sentences(cfg.input)
    sources = fit_sources([trained.src_tokenizer.encode(s) for s in sentences], trained.model, name)
    results = translate_ids(trained.model, sources, settings, cfg.batch_size)
    lines = format_translations(results, trained.tgt_tokenizer, settings.n_best)
    text = "".join(line + "\n" for line in lines)
    if out_path is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        out_path.write_text(text, encoding="utf-8")
    if png_path is not None:
        trained.model.cpu()
        panels = save_attention(trained, sources[0], results[0][0][0], png_path)
        log.info("attention maps of line 1 (%d panels) written to %s", panels, png_path)
    return lines


@hydra.main(version_base="1.3", config_path="conf", config_name="translate")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()
    try:
        translate(cfg)
    except ERRORS as err:
        explain_and_exit(err, "attnlab-translate")


if __name__ == "__main__":
    main()
