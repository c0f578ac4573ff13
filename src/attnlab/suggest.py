""""Did you mean ...?" for config typos: a key, a group option or a sweep parameter.

Hydra reports a composition error itself (`run_and_report`: the message, then exit 1) before any
code of ours runs, so `with_suggestions` wraps the `@hydra.main` function: when Hydra exits with 1,
it composes the same command line once more through the Compose API, catches the error this time,
and adds one line with the closest valid names (difflib) under Hydra's message. Keys inside a
sweep file's `hydra.sweeper.params` are checked the same way, since Hydra only applies those
when it launches the jobs.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import sys
from collections.abc import Callable, Iterable

from hydra import compose, initialize_config_module
from hydra._internal.utils import get_args_parser  # the parser @hydra.main uses (hydra-core 1.3)
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError


def did_you_mean(word: str, options: Iterable[str]) -> str | None:
    """The closest option by difflib ratio (0.6, its default cutoff), or None."""
    close = difflib.get_close_matches(word, list(options), n=1)
    return close[0] if close else None


def trainer_arguments() -> list[str]:
    import lightning as L

    return [p for p in inspect.signature(L.Trainer.__init__).parameters if p != "self"]


# Names researchers bring from other tools, under any group, and the attnlab keys doing that job;
# spelling alone would point elsewhere (data.batch_size -> data.val_size, a different thing).
ALIASES = {
    "batch_size": "data.max_tokens? (batches are sized in padded tokens of the longer side, not in sentences)",
    "max_tokens_per_batch": "data.max_tokens?",
    "lr": "optim.lr?",
    "learning_rate": "optim.lr?",
    "warmup": "optim.warmup_steps?",
    "epochs": "trainer.max_epochs?",
    "num_heads": "model.n_heads?",
    "hidden_size": "model.d_model?",
    "dim_feedforward": "model.d_ff?",
    "num_layers": "model.encoder_layers and model.decoder_layers? (set each stack's depth)",
    "n_layers": "model.encoder_layers and model.decoder_layers? (set each stack's depth)",
    "beam": "decode.beam_size? (with decode=beam)",
}


def _hint_for_key(err: ConfigAttributeError | ConfigKeyError, groups: list[str]) -> str | None:
    full_key, key = str(err.full_key or err.key), str(err.key)
    parent = full_key.rpartition(".")[0]
    if key in ALIASES:
        return f"did you mean {ALIASES[key]}"
    siblings = list(err.parent_node.keys()) if err.parent_node is not None else []
    if not parent:  # a top-level key: maybe a misspelt group (`modell=tiny`)
        siblings += groups
    if parent == "trainer":  # trainer.* are Lightning Trainer arguments; the yaml sets only a few
        siblings += trainer_arguments()
        if key in siblings:
            return f"{full_key} is a Trainer argument not set in conf/trainer: add it with +{full_key}=..."
    best = did_you_mean(key, siblings)
    if best in groups and not parent:
        return f"did you mean the config group {best} ({best}=<option>)?"
    if best is None:
        under = f" under {parent}" if parent else ""
        return f"{full_key} is not a config key; valid keys{under}: {', '.join(siblings)}"
    return f"did you mean {parent + '.' if parent else ''}{best}?"


def hint_for(err: BaseException, groups: list[str]) -> str | None:
    """One line for a composition error, or None when there is nothing to add to Hydra's message."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and err.options:
        group, _, name = err.missing_cfg_file.rpartition("/")
        best = did_you_mean(name, err.options)
        return f"did you mean {group}={best}?" if best else None
    cause = err.__cause__ or err
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.key is not None:
        return _hint_for_key(cause, groups)
    return None


def first_of_sweeps(overrides: list[str]) -> list[str]:
    """A multirun's overrides with each sweep (`a=1,2`, `range(...)`) cut to its first value."""
    out = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            out.append(override.input_line)
            continue
        try:
            first = next(iter(override.sweep_string_iterator()))
        except Exception:  # an interval() for Optuna: no values to pick, and its key is checked below
            first = None
        if first is not None:
            out.append(f"{override.get_key_element()}={first}")
    return out


def _sweeper_params(cfg) -> list[str]:
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    return first_of_sweeps([f"{key}={value}" for key, value in params.items()])


def diagnose(argv: list[str], config_module: str, config_name: str) -> str | None:
    """Compose `argv` as Hydra did and explain the first error, with the closest valid name."""
    args = get_args_parser().parse_args(argv)
    if args.config_path or args.config_dir:
        return None  # a user's own config tree: Hydra's message is all we have
    overrides = first_of_sweeps(args.overrides)
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module, version_base="1.3"):
        groups = GlobalHydra.instance().config_loader().list_groups("")
        name = args.config_name or config_name
        try:
            cfg = compose(name, overrides, return_hydra_config=True)
            compose(name, overrides + _sweeper_params(cfg))
        except Exception as err:
            return hint_for(err, groups)
    return None


def with_suggestions(app: str, config_name: str, config_module: str = "attnlab.conf") -> Callable:
    """Decorator for a `@hydra.main` function: on Hydra's exit 1, print a "did you mean" line."""

    def wrap(hydra_main: Callable) -> Callable:
        @functools.wraps(hydra_main)
        def run(*args, **kwargs):
            try:
                return hydra_main(*args, **kwargs)
            except SystemExit as stop:
                if stop.code == 1:
                    try:
                        hint = diagnose(sys.argv[1:], config_module, config_name)
                    except Exception:  # never let the hint hide Hydra's own message
                        hint = None
                    if hint:
                        print(f"{app}: {hint}", file=sys.stderr)
                raise

        return run

    return wrap
