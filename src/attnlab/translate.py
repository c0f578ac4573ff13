"""`attnlab-translate ckpt=...`: sentences from stdin or a file -> translations on stdout or a file.

Output format: one translation per input line. With `decode.n_best` > 1, every hypothesis
on its own line as `line<TAB>rank<TAB>score<TAB>text` (line and rank count from 1; score is
the hypothesis' log-probability), best first. Sentences longer than `model.max_len` tokens
are truncated with a warning on stderr; empty input and empty lines are refused.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from .attention_plot import save_attention_png
from .checkpoint import CheckpointError, TrainedModel, load_for_inference
from .cli import USER_ERRORS, explain_and_exit
from .config import ConfigError
from .data.text import CorpusError, read_lines
from .decoding.batch import fit_sources, translate_ids
from .runtime import keep_freed_memory

log = logging.getLogger("attnlab")
ERRORS = (*USER_ERRORS, CheckpointError)


def decode_settings(decode: DictConfig) -> dict:
    """`decode.*` as keyword arguments of `attnlab.decoding.decode`, checked."""
    d = OmegaConf.to_container(decode, resolve=True)
    if d.get("strategy") not in ("greedy", "beam"):
        raise ConfigError(f"decode.strategy={d.get('strategy')!r} is not one of ['greedy', 'beam']")
    beam, n_best = d.get("beam_size", 1), d.get("n_best", 1)
    if d["strategy"] == "beam" and not 1 <= n_best <= beam:
        raise ConfigError(f"decode.n_best={n_best} must be in [1, decode.beam_size={beam}]")
    if d["strategy"] == "greedy" and n_best != 1:
        raise ConfigError("decode.n_best > 1 needs decode=beam (greedy search keeps one hypothesis)")
    return d


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


def save_attention(trained: TrainedModel, src_ids: list[int], hyp_ids: list[int], path: str) -> int:
    """Attention maps of one sentence and its translation (teacher-forced on the output) as a PNG grid."""
    model, cfg = trained.model, trained.model.config
    tgt_in = [cfg.bos_id] + hyp_ids[: cfg.max_len - 1]
    maps = model.attention_maps(torch.tensor([src_ids]), torch.tensor([tgt_in]))
    src_labels = token_labels(trained.src_tokenizer, src_ids)
    tgt_labels = token_labels(trained.tgt_tokenizer, tgt_in)
    return save_attention_png(maps, src_labels, tgt_labels, to_absolute_path(path))


def translate(cfg: DictConfig) -> list[str]:
    decode_cfg = decode_settings(cfg.decode)
    # An averaged model is written to a temporary file, never into the user's working directory.
    with tempfile.TemporaryDirectory(prefix="attnlab-average-") as scratch:
        trained = load_for_inference(to_absolute_path(cfg.ckpt), cfg.average_last, scratch)
    trained.model.to(cfg.device)
    sentences, name = read_sentences(cfg.input)
    sources = fit_sources([trained.src_tokenizer.encode(s) for s in sentences], trained.model, name)
    results = translate_ids(trained.model, sources, decode_cfg, cfg.batch_size)
    lines = format_translations(results, trained.tgt_tokenizer, decode_cfg.get("n_best", 1))
    text = "".join(line + "\n" for line in lines)
    if cfg.output == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        Path(to_absolute_path(cfg.output)).write_text(text, encoding="utf-8")
    if cfg.attention_png:
        trained.model.cpu()
        panels = save_attention(trained, sources[0], results[0][0][0], cfg.attention_png)
        log.info("attention maps of line 1 (%d panels) written to %s", panels, to_absolute_path(cfg.attention_png))
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
