"""`attnlab-bench`: attnlab's transformer against its peers, same hyper-parameters, one process.

Measures training tokens/s, greedy and beam decoding sentences/s, peak tensor memory, the
GEMM ceiling and each system's MFU, and the Lightning loop's overhead over the bare step;
prints tables of figures and attnlab/peer ratios, writes JSON (docs/performance.md).
"""

from __future__ import annotations

import json
import logging
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import hydra
import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from ..cli import USER_ERRORS, explain_and_exit
from ..errors import ConfigError
from ..model import TransformerConfig
from ..runtime import keep_freed_memory
from ..training.metadata import cpu_model
from . import config as bench_config
from . import real
from . import results as res
from .flops import GemmSuite, total_flops, train_gemms
from .lightning_loop import lightning_overhead
from .measure import interleaved_medians, peak_call_bytes, tensor_bytes, timed
from .peers import SYSTEMS, CompiledAttnlabSystem, System
from .workload import DecodeStep, TrainStep, random_batch

log = logging.getLogger("attnlab")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def model_config(cfg: DictConfig) -> TransformerConfig:
    try:
        model = OmegaConf.to_container(cfg.model, resolve=True)
        return TransformerConfig(**model, src_vocab_size=cfg.vocab_size, tgt_vocab_size=cfg.vocab_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def build_systems(cfg: DictConfig, model_cfg: TransformerConfig, device: torch.device) -> dict[str, System]:
    """The requested systems, each initialised from the same seed; marian is skipped (with a
    warning) when transformers is not installed, since it is an optional extra."""
    systems = {}
    for name in cfg.systems:
        torch.manual_seed(cfg.seed)
        try:
            systems[name] = SYSTEMS[name](model_cfg)
        except ImportError as err:
            log.warning("skipping %s: %s", name, err)
            continue
        except ConfigError as err:  # e.g. model.norm=pre: Marian has no such switch
            others = ",".join(n for n in cfg.systems if n != name)
            raise ConfigError(f"{err}; compare without it: systems=[{others}]") from None
        systems[name].model.to(device)
    if cfg.compile or cfg.compile_decode:
        torch.manual_seed(cfg.seed)
        systems[res.COMPILED] = CompiledAttnlabSystem(model_cfg, train=cfg.compile, decode=cfg.compile_decode)
        systems[res.COMPILED].model.to(device)
    return systems


def _memory(train: dict[str, TrainStep], decoders: dict[str, DecodeStep], device: torch.device) -> dict:
    """MiB held in tensors at the peak of one (warmed-up) call: what persists (weights, Adam
    state) plus the call's own peak (activations, gradients, caches)."""
    out: dict[str, dict] = {}
    for name, step in train.items():
        static = tensor_bytes(step.system.model, step.optimizer)
        out.setdefault(name, {})["train"] = (static + peak_call_bytes(step, device)) / res.MIB
    for task, step in decoders.items():
        what, name = task.split("/")
        out.setdefault(name, {})[what] = (tensor_bytes(step.system.model) + peak_call_bytes(step, device)) / res.MIB
    return out


def _meta(cfg: DictConfig, device: torch.device, skipped: list[str]) -> dict:
    versions = {}
    for package in ("torch", "lightning", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "versions": versions,
        "skipped": skipped,
    }


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def run_benchmark(cfg: DictConfig) -> dict:
    """Build, warm up, time (interleaved medians), measure memory; return the results dict."""
    bench_config.check(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    model_cfg = model_config(cfg)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    systems = build_systems(cfg, model_cfg, device)
    batch = random_batch(model_cfg, cfg.batch_size, cfg.src_len, cfg.tgt_len, cfg.seed, device)

    # attnlab+compile is timed for training with compile=true, for decoding with compile_decode=true.
    timed_for_training = [n for n in systems if n != res.COMPILED or cfg.compile]
    precision = {n: s.precision or cfg.precision for n, s in systems.items()}  # attnlab-bf16: its own
    train = {n: TrainStep(systems[n], batch, optim, precision[n]) for n in timed_for_training}
    decoders = {}
    for name, s in systems.items():
        if name != res.COMPILED or cfg.compile_decode:
            for what, beams in (("greedy", 1), ("beam", cfg.beam_size)):
                step = DecodeStep(s, batch, cfg.decode_len, beams, precision[name])
                if step.available:
                    decoders[f"{what}/{name}"] = step
    gemms = train_gemms(model_cfg, cfg.batch_size, cfg.src_len, cfg.tgt_len)
    # Each system's MFU against the GEMM ceiling of its own precision.
    gemm = {p: "gemm" if p == cfg.precision else f"gemm/{p}" for p in {cfg.precision, *precision.values()}}
    tasks = {task: GemmSuite(gemms, device, DTYPES[p]) for p, task in gemm.items()}
    tasks |= {f"train/{name}": timed(step, device) for name, step in train.items()}
    tasks |= {task: timed(step, device) for task, step in decoders.items()}
    times = interleaved_medians(tasks, cfg.warmup, cfg.repeats)

    memory = _memory(train, decoders, device) if cfg.memory else {}
    lightning = (
        lightning_overhead(model_cfg, batch, optim, cfg.warmup, cfg.repeats, cfg.precision) if cfg.lightning else None
    )
    flops = total_flops(gemms)
    ceiling = {p: flops / times[task]["median_s"] for p, task in gemm.items()}  # FLOP/s
    ceiling_s = times["gemm"]["median_s"]  # the benchmark's own precision
    figures = {
        name: res.system_figures(times, memory, name, batch.target_tokens, cfg.batch_size, flops,
                                 ceiling[precision[name]])
        for name in systems
    }  # fmt: skip
    for name, figure in figures.items():
        figure["precision"] = precision[name]
    ratios = res.ratios(figures)
    return {
        "meta": _meta(cfg, device, [n for n in cfg.systems if n not in systems]),
        "config": {k: _plain(cfg[k]) for k in cfg if k not in ("paths", "output")},
        "gemm": {"train_flops": flops, "ceiling_s": ceiling_s, "ceiling_flops_per_s": flops / ceiling_s},
        "systems": figures,
        "lightning": lightning,
        "ratios": ratios,
        "paired_ratios": res.paired_ratios(times, figures),
        "targets": res.targets(figures, ratios, lightning, times),
        "times_s": {task: t["times_s"] for task, t in times.items()},
    }


def bench(cfg: DictConfig) -> dict:
    if cfg.real.ckpt:  # the real-data part (perf/real.py) instead of the synthetic one
        results = {"meta": _meta(cfg, torch.device("cpu"), []), "real": real.run_real(cfg)}
        real.print_real(results["real"])
    else:
        results = run_benchmark(cfg)
        res.print_tables(results)
    if cfg.output:
        path = Path(to_absolute_path(cfg.output))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2))
        print(f"results: {path}")
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench")
def main(cfg: DictConfig) -> None:
    keep_freed_memory()
    try:
        bench(cfg)
    except USER_ERRORS as err:
        explain_and_exit(err, "attnlab-bench")


if __name__ == "__main__":
    main()
