"""`DecodeConfig`: the decoding settings (`decode.*`) as one typed, checked value.

Every part that decodes holds this one type: the training schema (attnlab.config derives the
Hydra node from it), the LightningModule, attnlab-eval, attnlab-translate, the evaluation protocol
and `generate`, the search itself. Each key is named, given its default and checked here only, so a
setting one command refuses is refused by all of them, before anything is decoded, with the same
message naming the key. Plain Python (no Hydra, OmegaConf or torch): callers pass plain dicts.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError

Strategy = Literal["greedy", "beam"]
STRATEGIES: tuple[str, ...] = typing.get_args(Strategy)
# The weights the search runs with (attnlab/decoding/precision.py): fp32 as trained; bf16 the whole
# model in bfloat16; int8 the large linear layers quantised (dynamic int8), for serving.
Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)


@dataclass(frozen=True)
class DecodeConfig:
    """`decode.*`. conf/decode/{beam,greedy}.yaml set the command-line defaults; these defaults fill a
    key a config or a checkpoint does not give. A whole number given for a float key becomes a float."""

    strategy: Strategy = "greedy"
    beam_size: int = 4  # hypotheses kept per sentence (beam search only)
    n_best: int = 1  # hypotheses returned per sentence, best first (more than one: beam search only)
    length_penalty: float = 0.6  # GNMT alpha, ranks beam search's hypotheses; scores stay log-probs
    max_len_a: float = 1.0  # at most a * source length + b output tokens, EOS included
    max_len_b: int = 50
    compile: bool = False  # the decoder step under torch.compile: changes the speed, never the output
    min_len: int = 0  # no EOS before min_len tokens (INFERENCE_ONLY: not a key of attnlab-train)
    precision: Precision = "fp32"  # the weights' number format while decoding (INFERENCE_ONLY)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f.name, getattr(self, f.name)))
        check_beam(self.strategy, self.beam_size, self.n_best)

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> DecodeConfig:
        """From `decode.*` as a plain mapping (a resolved config node, a checkpoint's hparams); a key
        that is not a decode setting is a ConfigError naming it."""
        check_keys(settings)
        return cls(**settings)

    def replace(self, **changes: Any) -> DecodeConfig:
        """A copy with `changes`, checked like any other."""
        return DecodeConfig.from_dict({**dataclasses.asdict(self), **changes})

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded (results.json's and protocol.json's `decode`, a run's hparams):
        every training key, and an inference-only key only when it was set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in INFERENCE_ONLY or v != DEFAULTS[k]}

    def describe(self) -> str:
        """The settings as eval and translate print them: what decides the output, not its speed."""
        shown = [f"{k}={getattr(self, k)}" for k in SHOWN]
        if self.precision != DEFAULTS["precision"]:  # it changes the output too, a little
            shown.append(f"precision={self.precision}")
        return " ".join(shown)

    @classmethod
    def for_checkpoint(
        cls, command: Mapping[str, Any], run: Mapping[str, Any] | None, given: Iterable[str]
    ) -> DecodeConfig:
        """How attnlab-eval, attnlab-translate and the protocol decode a trained checkpoint: as its run
        did (`run`, the decode.* its checkpoint recorded), under the keys given on the command line
        (`given`, with their values in `command`); the command's own settings (`command`: its
        defaults and those keys) fill what the run did not record. SPEED_ONLY keys are never the
        run's. A greedy run given a key only beam search reads is decoded with beam search, since
        that key asks for it."""
        given = set(given)
        recorded = {k: v for k, v in (run or {}).items() if k not in SPEED_ONLY and k not in given}
        settings = {**command, **recorded}
        if "strategy" not in given and settings.get("strategy", DEFAULTS["strategy"]) == "greedy" and given & BEAM_ONLY:
            settings["strategy"] = "beam"
        return cls.from_dict(settings)


KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(DecodeConfig))
DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(DecodeConfig)}
# Keys only beam search reads: given on the command line of eval/translate, they ask for beam search.
BEAM_ONLY = frozenset({"beam_size", "n_best", "length_penalty"})
# How fast to decode, not what: the command's own setting, never the one a checkpoint recorded.
SPEED_ONLY = frozenset({"compile"})
# Taken by attnlab-eval and attnlab-translate (`+decode.min_len=N`) but not a key of the training
# schema (conf/decode/ does not set it), so a training config still refuses it.
INFERENCE_ONLY = frozenset({"min_len", "precision"})
# The keys eval and translate print (describe), in their order.
SHOWN = ("strategy", "beam_size", "length_penalty", "max_len_a", "max_len_b", "n_best")
_HINTS = typing.get_type_hints(DecodeConfig)


def check_keys(settings: Mapping[str, Any]) -> None:
    """Each key is a decode setting and each value of its type; the rules between keys (check_beam)
    need every key, so they wait for the DecodeConfig. attnlab-eval and attnlab-translate check the
    command line with this before they read a checkpoint."""
    for key, value in settings.items():
        if key not in KEYS:
            raise ConfigError(f"decode.{key} is not a decode setting; valid keys under decode: {', '.join(KEYS)}")
        _checked(key, value)


def check_beam(strategy: str, beam_size: int, n_best: int) -> None:
    """The one rule set for beam_size and n_best (the schema's validation, eval, translate, the
    LightningModule and beam_search all come here): a beam of at least one hypothesis, n_best of
    them returned, and greedy search, which keeps one, returns one."""
    if beam_size < 1:
        raise ConfigError(f"decode.beam_size={beam_size} must be >= 1 (hypotheses kept per sentence)")
    if n_best < 1 or (strategy == "beam" and n_best > beam_size):
        raise ConfigError(
            f"decode.n_best={n_best} must be in [1, decode.beam_size={beam_size}] (the best of the beam's "
            "hypotheses are returned)"
        )
    if strategy == "greedy" and n_best > 1:
        raise ConfigError(
            f"decode.n_best={n_best} needs decode=beam (greedy search keeps one hypothesis); "
            f"use decode=beam decode.n_best={n_best}, or decode.n_best=1"
        )


def _checked(key: str, value: Any) -> Any:
    """`value` as the type of `key`, or a ConfigError naming the key."""
    kind = _HINTS[key]
    if typing.get_origin(kind) is Literal:
        if value not in typing.get_args(kind):
            raise ConfigError(f"decode.{key}={value!r} is not one of {list(typing.get_args(kind))}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"decode.{key}={value!r} must be true or false")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        what = "a number" if kind is float else "a whole number"
        raise ConfigError(f"decode.{key}={value!r} must be {what}")
    return float(value) if kind is float else value
