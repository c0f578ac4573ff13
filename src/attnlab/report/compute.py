"""The report's compute columns: training FLOPs per target token from the model's own matmul count
(attnlab.perf.flops), the target tokens a run trained on, and their product, the run's training FLOPs.

The tokens are the run's own count (`train/target_tokens`, logged by the LightningModule and kept in
its checkpoints across resumes). Runs made before that counter existed get an estimate, and the report
marks it (`ESTIMATED`): the mean training rate (`train/tokens_per_sec`, which counts the source and
target tokens of each step) times the run's wall time, halved for the target side (source and target
taken as equally long). Wall time also covers validation and the test, so the estimate errs high.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .. import config as _registers_resolvers  # noqa: F401  (${attnlab.scaled:...} in table3 configs)
from ..data.tokenizers import SPECIALS
from ..model import TransformerConfig
from ..perf.flops import total_flops, train_gemms

TOKENS_LABEL = "est.: tokens/s × time / 2"
ESTIMATED = "~"  # prefixes an estimated token or FLOP total in the report


def first_test_set(protocol: dict | None) -> tuple[str, dict] | None:
    """(name, record) of the protocol's first test set, the one that gives test/*."""
    sets = (protocol or {}).get("test_sets") or {}
    return next(iter(sets.items()), None)


def _select(cfg, key: str):
    try:
        return OmegaConf.select(cfg, key)
    except OmegaConfBaseException:  # an interpolation only Hydra resolves: not needed here
        return None


def model_shape(run_dir: Path, protocol: dict | None) -> TransformerConfig | None:
    """The run's TransformerConfig: as protocol.json recorded it (the tokenizers' real vocabulary sizes),
    else rebuilt from the resolved `.hydra/config.yaml` with the vocabulary the data config implies
    (synthetic: its symbols and the special tokens; text: `data.vocab_size`)."""
    if protocol and protocol.get("model"):
        return TransformerConfig(**protocol["model"])
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    try:
        model = OmegaConf.to_container(cfg.model, resolve=True)
    except (OmegaConfBaseException, AttributeError):
        return None
    if _select(cfg, "data.source") == "synthetic":
        vocab = _select(cfg, "data.n_symbols")
        vocab = None if vocab is None else int(vocab) + len(SPECIALS)
    else:
        vocab = _select(cfg, "data.vocab_size")
    if vocab is None:
        return None
    try:
        return TransformerConfig(**model, src_vocab_size=int(vocab), tgt_vocab_size=int(vocab))
    except (TypeError, ValueError):
        return None


def mean_length(run_dir: Path, protocol: dict | None) -> float | None:
    """Tokens per sentence for the attention products' share of the count (the rest is per token):
    synthetic data its mean length plus EOS; text the mean word count of the test references (else
    the hypotheses) plus EOS, which undercounts subword pieces slightly."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(path) if path.is_file() else None
    if cfg is not None and _select(cfg, "data.source") == "synthetic":
        low, high = _select(cfg, "data.min_len"), _select(cfg, "data.max_len")
        if low is not None and high is not None:
            return (int(low) + int(high)) / 2 + 1
    first = first_test_set(protocol)
    for key in ("references", "hypotheses"):
        file = Path(run_dir) / first[1][key] if first and first[1].get(key) else None
        if file is not None and file.is_file():
            lines = file.read_text(encoding="utf-8").splitlines()
            if lines:
                return sum(len(line.split()) for line in lines) / len(lines) + 1
    return None


def flops_per_target_token(shape: TransformerConfig, length: float) -> float:
    """Forward + backward matmul FLOPs of one sentence pair of `length` tokens a side, per target token."""
    tokens = max(1, round(length))
    return total_flops(train_gemms(shape, batch=1, src_len=tokens, tgt_len=tokens)) / tokens


def compute_values(run_dir: Path, protocol: dict | None, values: dict[str, float]) -> dict[str, float]:
    """`flops_per_token`, `train_tokens` and `train_flops` for one run, where they can be had;
    `tokens_estimated` = 1.0 when the run logged no token counter and the tokens are estimated."""
    shape, length = model_shape(run_dir, protocol), mean_length(run_dir, protocol)
    out: dict[str, float] = {}
    if shape is not None and length is not None:
        out["flops_per_token"] = flops_per_target_token(shape, length)
    rate, seconds = values.get("tokens_per_sec"), values.get("time_s")
    if values.get("train/target_tokens"):
        out["train_tokens"] = values["train/target_tokens"]
    elif rate and seconds:
        out["train_tokens"] = rate * seconds / 2
        out["tokens_estimated"] = 1.0
    if "flops_per_token" in out and "train_tokens" in out:
        out["train_flops"] = out["flops_per_token"] * out["train_tokens"]
    return out
