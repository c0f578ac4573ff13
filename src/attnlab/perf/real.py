"""`attnlab-bench real.ckpt=...`: one trained checkpoint decoding a real test set, in attnlab and, on
the same weights, in Hugging Face `generate` (the attnlab-export Marian folder) and CTranslate2 (its
conversion, fp32 and int8).

Every system decodes the same sentences with the same search: the same beam size, no length
penalty (alpha 0: attnlab's GNMT penalty and the len^alpha of the others agree only there), search
ending once `beam_size` hypotheses have ended (HF `early_stopping=True`), and one output length
limit for all. Sentences are sorted by length and cut into batches of `batch_size` for attnlab and
HF alike (CTranslate2 sorts its own). attnlab and CTranslate2 decode one batch per core at once
(decoding/batch.py: decoding_workers; CTranslate2's inter_threads); HF's generate has no such mode
and runs one batch on all of torch's threads. The timed part is ids in, ids out: tokenisation and scoring
are outside it. Rounds are interleaved (measure.interleaved_medians), so load from elsewhere hits
every system alike, and ratios are also taken round by round (paired).

BLEU is scored on each system's output; attnlab and HF fp32 run the same model with the same search,
so their BLEU must agree (within `bleu_tolerance`), and each attnlab variant that claims to change
only the speed (compile) must give the eager path's hypotheses exactly.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sacrebleu
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from ..checkpoint import TrainedModel, load_for_inference
from ..data.tokenizers import content_ids
from ..decoding import DecodeConfig
from ..decoding.batch import fit_sources, translate_ids
from ..errors import ConfigError
from .measure import interleaved_medians, timed
from .results import per_round

log = logging.getLogger("attnlab")

ATTNLAB = "attnlab"
# Variants of attnlab: the DecodeConfig keys each one changes.
ATTNLAB_VARIANTS = {
    ATTNLAB: {},
    "attnlab+compile": {"compile": True},
    "attnlab-bf16": {"precision": "bf16"},
    "attnlab-int8": {"precision": "int8"},
}
PEERS = ("marian", "ctranslate2", "ctranslate2-int8")
SYSTEMS = (*ATTNLAB_VARIANTS, *PEERS)
STRATEGIES = ("greedy", "beam")
# (system, peer, strategy, at least): attnlab's speed over the peer's, as issue 21 set them.
TARGETS = [
    (ATTNLAB, "marian", "greedy", 2.0),
    (ATTNLAB, "marian", "beam", 2.0),
    (ATTNLAB, "ctranslate2", "greedy", 1.2),
    (ATTNLAB, "ctranslate2", "beam", 1.2),
    ("attnlab-int8", "ctranslate2-int8", "greedy", 1.0),
    ("attnlab-int8", "ctranslate2-int8", "beam", 1.0),
]
# Variants that change only the speed: their hypotheses must equal attnlab's eager ones.
SPEED_ONLY = ("attnlab+compile",)


@dataclass
class TestSet:
    name: str
    sources: list[list[int]]  # source ids, EOS appended (attnlab's input)
    pieces: list[list[str]]  # the same as SentencePiece pieces (CTranslate2's input)
    references: list[str]


class Decoder:
    """One system: `run()` decodes the whole test set and keeps its output ids (content only)."""

    name: str
    output: list[list[int]]

    def run(self) -> None:
        raise NotImplementedError


class AttnlabDecoder(Decoder):
    def __init__(self, name: str, trained: TrainedModel, test: TestSet, config: DecodeConfig, batch_size: int):
        self.name, self.trained, self.test, self.config, self.batch_size = name, trained, test, config, batch_size

    def run(self) -> None:
        out = translate_ids(self.trained.model, self.test.sources, self.config, self.batch_size)
        self.output = [n_best[0][0] for n_best in out]


class MarianDecoder(Decoder):
    """HF `generate` on the exported folder, batches as attnlab makes them (longest first)."""

    name = "marian"

    def __init__(self, folder: Path, test: TestSet, config: DecodeConfig, limit: int, batch_size: int, pad: int):
        from transformers import MarianMTModel

        self.model = MarianMTModel.from_pretrained(folder).eval()
        self.test, self.pad, self.batch_size = test, pad, batch_size
        beams = config.beam_size if config.strategy == "beam" else 1
        # max_length counts the decoder start token; attnlab's limit counts the EOS it forces.
        self.kwargs = dict(num_beams=beams, do_sample=False, max_length=limit + 1)
        if beams > 1:
            self.kwargs.update(length_penalty=0.0, early_stopping=True)
        self.order = sorted(range(len(test.sources)), key=lambda i: -len(test.sources[i]))

    @torch.no_grad()
    def run(self) -> None:
        from torch.nn.utils.rnn import pad_sequence

        output: list = [None] * len(self.order)
        for start in range(0, len(self.order), self.batch_size):
            chunk = self.order[start : start + self.batch_size]
            src = pad_sequence([torch.tensor(self.test.sources[i]) for i in chunk], batch_first=True,
                               padding_value=self.pad)  # fmt: skip
            out = self.model.generate(input_ids=src, attention_mask=src != self.pad, **self.kwargs)
            for row, i in enumerate(chunk):
                output[i] = content_ids(out[row, 1:].tolist())
        self.output = output


class CTranslate2Decoder(Decoder):
    def __init__(self, name: str, folder: Path, test: TestSet, config: DecodeConfig, limit: int,
                 batch_size: int, compute_type: str, threads: int, piece_id: Callable[[str], int]):  # fmt: skip
        import ctranslate2

        self.name, self.test = name, test
        # Its faster layout here, as attnlab's (decoding_workers): `threads` batches at once, one core
        # each (on 2 cores about twice the sentences/s of one batch on 2 threads: docs/performance.md).
        self.translator = ctranslate2.Translator(str(folder), device="cpu", compute_type=compute_type,
                                                 intra_threads=1, inter_threads=threads)  # fmt: skip
        # CTranslate2 sets the OpenMP thread count of the calling thread to its intra_threads, and
        # torch reads the same setting: give the process's own back, or every later torch op (and
        # each later system's thread count) would run on one core.
        torch.set_num_threads(threads)
        self.threads = threads
        beams = config.beam_size if config.strategy == "beam" else 1
        # CTranslate2 stops at its limit without an EOS; attnlab's limit counts the EOS it forces there.
        self.kwargs = dict(beam_size=beams, length_penalty=0.0, max_decoding_length=limit - 1, min_decoding_length=0,
                           max_batch_size=batch_size, suppress_sequences=[["<pad>"], ["<s>"]])  # fmt: skip
        self.piece_id = piece_id

    def run(self) -> None:
        results = self.translator.translate_batch(self.test.pieces, **self.kwargs)
        torch.set_num_threads(self.threads)
        self.output = [content_ids(self.piece_id(p) for p in r.hypotheses[0]) for r in results]


def _test_set(trained: TrainedModel, cfg: DictConfig) -> TestSet:
    from ..data.text import read_lines
    from ..evaluate import read_split, run_data_config

    if cfg.src_file or cfg.ref_file:
        if not (cfg.src_file and cfg.ref_file):
            raise ConfigError("real.src_file and real.ref_file go together (one sentence a line, aligned)")
        src = read_lines(Path(to_absolute_path(cfg.src_file)))
        ref = read_lines(Path(to_absolute_path(cfg.ref_file)))
        if len(src) != len(ref):
            raise ConfigError(f"real.src_file has {len(src)} lines but real.ref_file {len(ref)}; they must align")
        name = Path(cfg.src_file).stem
    else:
        src, ref = read_split(*run_data_config(OmegaConf.create({"ckpt": cfg.ckpt, "data": None, "seed": 0})),
                              cfg.split)  # fmt: skip
        name = cfg.split
    src, ref = src[: cfg.limit], ref[: cfg.limit]
    tok = trained.src_tokenizer
    sources = fit_sources([tok.encode(s) for s in src], trained.model, what=name)
    # CTranslate2's input: SentencePiece pieces, EOS as "</s>", as exported (a word-level run has none, and
    # attnlab-export refuses it before any peer is built)
    pieces = [[tok.sp.id_to_piece(i) for i in ids] for ids in sources] if hasattr(tok, "sp") else []
    return TestSet(name, sources, pieces, ref)


def _build(cfg: DictConfig, trained: TrainedModel, test: TestSet, strategy: str, work: Path,
           threads: int) -> dict[str, Decoder]:  # fmt: skip
    """The requested systems for one search; peers from one export of the checkpoint (made once, in `work`)."""
    model_cfg = trained.model.config
    limit = min(cfg.max_len, model_cfg.max_len)
    # One limit for every sentence (the others have no a * source length + b); alpha 0 (module docstring).
    config = DecodeConfig(strategy=strategy, beam_size=cfg.beam_size, length_penalty=0.0, max_len_a=0.0,
                          max_len_b=limit)  # fmt: skip
    decoders: dict[str, Decoder] = {}
    for name in cfg.systems:
        if name in ATTNLAB_VARIANTS:
            decoders[name] = AttnlabDecoder(name, trained, test, config.replace(**ATTNLAB_VARIANTS[name]),
                                            cfg.batch_size)  # fmt: skip
        elif name == "marian":
            decoders[name] = MarianDecoder(work / "marian", test, config, limit, cfg.batch_size, model_cfg.pad_id)
        else:
            compute = "int8" if name.endswith("int8") else "float32"
            decoders[name] = CTranslate2Decoder(name, work / "ctranslate2", test, config, limit, cfg.batch_size,
                                                compute, threads, trained.tgt_tokenizer.sp.piece_to_id)
    return decoders


def _export(cfg: DictConfig, trained: TrainedModel, work: Path) -> None:
    """The checkpoint as a Marian folder and a CTranslate2 model (fp32; int8 is quantised at load)."""
    if not any(s in PEERS for s in cfg.systems):
        return
    from ..export import convert_ctranslate2, export_marian

    export_marian(trained, work / "marian")
    if any(s.startswith("ctranslate2") for s in cfg.systems):
        convert_ctranslate2(work / "marian", work / "ctranslate2", quantization="float32")


def check(cfg: DictConfig) -> None:
    unknown = [s for s in cfg.systems if s not in SYSTEMS]
    if unknown or ATTNLAB not in cfg.systems:
        raise ConfigError(f"real.systems={list(cfg.systems)} must include attnlab and name only {list(SYSTEMS)}")
    bad = [s for s in cfg.strategies if s not in STRATEGIES]
    if bad or not cfg.strategies:
        raise ConfigError(f"real.strategies={list(cfg.strategies)} must name some of {list(STRATEGIES)}")
    for key in ("batch_size", "beam_size", "rounds", "max_len"):
        if cfg[key] < 1:
            raise ConfigError(f"real.{key} must be >= 1, got {cfg[key]}")


def _bleu(trained: TrainedModel, output: list[list[int]], refs: list[str]) -> float:
    hyps = [trained.tgt_tokenizer.decode(ids) for ids in output]
    return sacrebleu.corpus_bleu(hyps, [refs]).score


def run_real(cfg: DictConfig) -> dict:
    """Decode the test set of `cfg.real` with every system and search; figures, ratios, targets, checks."""
    real = cfg.real
    check(real)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    threads = torch.get_num_threads()  # read before CTranslate2 can change it (CTranslate2Decoder)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)  # the averaged checkpoint and the exports, gone with the run
        trained = load_for_inference(to_absolute_path(real.ckpt), real.average_last, work)
        test = _test_set(trained, real)
        log.info("real-data benchmark: %s, %d sentences, systems %s", test.name, len(test.sources),
                 list(real.systems))  # fmt: skip
        _export(real, trained, work)
        decoders = {f"{strategy}/{name}": d for strategy in real.strategies
                    for name, d in _build(real, trained, test, strategy, work, threads).items()}  # fmt: skip
        tasks: dict[str, Callable[[], float]] = {task: timed(d.run, cpu) for task, d in decoders.items()}
        times = interleaved_medians(tasks, real.warmup, real.rounds)
    figures: dict[str, dict] = {}
    for task, decoder in decoders.items():
        strategy, name = task.split("/")
        seconds = times[task]["median_s"]
        tokens = sum(len(ids) + 1 for ids in decoder.output)  # output tokens, EOS included
        figures.setdefault(name, {})[strategy] = {
            "sentences_per_sec": len(test.sources) / seconds,
            "tokens_per_sec": tokens / seconds,
            "bleu": _bleu(trained, decoder.output, test.references),
            "seconds": seconds,
            # attnlab eager's speed over this system's, round by round (None for attnlab eager itself)
            "paired_vs_attnlab": None if name == ATTNLAB else per_round(times, task, f"{strategy}/{ATTNLAB}"),
        }
    checks = []
    for strategy in real.strategies:
        eager = decoders[f"{strategy}/{ATTNLAB}"].output
        for name in real.systems:
            task = f"{strategy}/{name}"
            if name in SPEED_ONLY:
                same = decoders[task].output == eager
                checks.append({"check": f"{name} {strategy}: hypotheses identical to attnlab eager", "ok": same})
            if name == "marian":
                gap = abs(figures[name][strategy]["bleu"] - figures[ATTNLAB][strategy]["bleu"])
                identical = sum(a == b for a, b in zip(decoders[task].output, eager)) / len(eager)
                checks.append({"check": f"marian {strategy}: BLEU within {real.bleu_tolerance} of attnlab "
                                        f"(gap {gap:.2f}; {identical:.1%} identical hypotheses)",
                               "ok": gap <= real.bleu_tolerance, "identical": identical})  # fmt: skip
    targets = []
    for system, peer, strategy, at_least in TARGETS:
        if system in figures and peer in figures and strategy in figures[system]:
            median = figures[system][strategy]["sentences_per_sec"] / figures[peer][strategy]["sentences_per_sec"]
            paired = per_round(times, f"{strategy}/{peer}", f"{strategy}/{system}")
            targets.append({"system": system, "peer": peer, "strategy": strategy, "target": at_least,
                            "ratio": median, "paired": paired, "met": paired >= at_least})  # fmt: skip
    return {
        "test_set": test.name,
        "sentences": len(test.sources),
        "checkpoint": real.ckpt,
        "average_last": real.average_last,
        "search": {"beam_size": real.beam_size, "length_penalty": 0.0, "max_len": min(real.max_len,
                   trained.model.config.max_len), "batch_size": real.batch_size},  # fmt: skip
        "threads": threads,
        "systems": figures,
        "checks": checks,
        "targets": targets,
        "times_s": {task: t["times_s"] for task, t in times.items()},
    }


def print_real(results: dict, console: Console | None = None) -> None:
    console = console or Console()
    search = results["search"]
    title = (f"real data: {results['test_set']}, {results['sentences']} sentences, beam {search['beam_size']} / "
             f"greedy, {results['threads']} threads (medians, interleaved rounds)")  # fmt: skip
    table = Table(title=title)
    for column in ("system", "search", "sentences/s", "tokens/s", "BLEU", "attnlab eager / system (paired)"):
        table.add_column(column, justify="left" if column in ("system", "search") else "right")
    for name, by_strategy in results["systems"].items():
        for strategy, f in by_strategy.items():
            ratio = f["paired_vs_attnlab"]
            table.add_row(name, strategy, f"{f['sentences_per_sec']:.1f}", f"{f['tokens_per_sec']:.0f}",
                          f"{f['bleu']:.2f}", "" if ratio is None else f"{ratio:.2f}x")  # fmt: skip
    console.print(table)
    for c in results["checks"]:
        console.print(("[green]ok[/] " if c["ok"] else "[red]FAILED[/] ") + c["check"])
    targets = Table(title="real-data targets (system over peer, sentences/s; paired: median of per-round ratios)")
    for column in ("system", "peer", "search", "ratio", "paired", "goal", "met"):
        targets.add_column(column)
    for t in results["targets"]:
        met = "[green]yes[/]" if t["met"] else "[red]no[/]"
        targets.add_row(t["system"], t["peer"], t["strategy"], f"{t['ratio']:.3f}", f"{t['paired']:.3f}",
                        f">= {t['target']}", met)  # fmt: skip
    console.print(targets)

