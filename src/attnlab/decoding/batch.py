"""Translating lists of sentences: length-sorted batches, each decoded with `generate`."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import torch
from torch.nn.utils.rnn import pad_sequence

from ..data.tokenizers import content_ids
from ..model import Transformer
from .config import DecodeConfig
from .precision import for_decoding
from .search import generate

log = logging.getLogger("attnlab")


def fit_sources(ids: list[list[int]], model: Transformer, what: str = "input") -> list[list[int]]:
    """Source ids (EOS appended) cut to model.max_len positions, with one warning naming the lines.

    attnlab truncates rather than refuses: the model cannot read past max_len positions,
    and dropping a sentence would misalign the output lines with the input lines.
    """
    cfg = model.config
    out, cut = [], []
    for line, sentence in enumerate(ids, start=1):
        if len(sentence) + 1 > cfg.max_len:
            cut.append(line)
            sentence = sentence[: cfg.max_len - 1]
        out.append(sentence + [cfg.eos_id])
    if cut:
        shown = ", ".join(map(str, cut[:5])) + (" ..." if len(cut) > 5 else "")
        log.warning(
            "%s: %d sentence(s) longer than model.max_len=%d tokens were truncated (line %s)",
            what,
            len(cut),
            cfg.max_len,
            shown,
        )
    return out


def decoding_workers(device: torch.device, compile: bool) -> int:
    """How many batches to decode at once: on a CPU, one per core torch would use (its intra-op
    threads), each batch's ops then running on one core. A decoding step is a hundred small ops;
    split across cores inside each op, most of a step's time goes to the threads meeting at every
    op, while whole batches on their own cores only share the interpreter (torch releases it inside
    each op). The outputs are the same: each batch is decoded exactly as alone. One on a GPU, and
    under decode.compile (a compiled graph is not called from several threads at once)."""
    if device.type != "cpu" or compile:
        return 1
    return max(1, torch.get_num_threads())


@contextmanager
def _ops_on_one_core():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def translate_ids(
    model: Transformer, sources: list[list[int]], config: DecodeConfig, batch_size: int = 64,
    workers: int | None = None,
) -> list[list[tuple[list[int], float]]]:  # fmt: skip
    """Source ids (each ending in EOS) -> per sentence, its n-best (content ids, log-prob), best first,
    decoded as `config` says.

    Sentences are decoded longest first in batches of similar length (little padding);
    the results come back in input order. `config.precision` other than fp32 decodes with a
    converted copy of the model (decoding/precision.py). `workers` batches are decoded at once,
    each on one core (None: `decoding_workers`).
    """
    model = for_decoding(model, config.precision, config.compile)
    cfg, device = model.config, next(model.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))
    results: list = [None] * len(sources)

    def decode_batch(chunk: list[int]) -> None:
        src = pad_sequence([torch.tensor(sources[i]) for i in chunk], batch_first=True, padding_value=cfg.pad_id)
        # Grad mode is per thread: a worker starts with it on. Inference mode rather than no_grad: a
        # step's hundred small ops skip autograd's version counters and view records (docs/performance.md);
        # the compiled step keeps no_grad, the mode its graphs are traced and guarded in.
        with torch.no_grad() if config.compile else torch.inference_mode():
            tokens, scores = generate(model, src.to(device), config)  # (b, n, T), (b, n)
        for row, i in enumerate(chunk):
            results[i] = [
                (content_ids(t, cfg.pad_id, cfg.bos_id, cfg.eos_id), float(s))
                for t, s in zip(tokens[row].tolist(), scores[row].tolist())
            ]

    chunks = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    workers = min(decoding_workers(device, config.compile) if workers is None else workers, len(chunks))
    if workers <= 1:
        for chunk in chunks:
            decode_batch(chunk)
        return results
    with _ops_on_one_core(), ThreadPoolExecutor(workers) as pool:
        list(pool.map(decode_batch, chunks))  # longest first: each worker takes the next batch when free
    return results
