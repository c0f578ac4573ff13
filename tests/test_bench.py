"""attnlab-bench (attnlab.perf): the benchmark's code path end to end at a tiny size, its JSON,
the arithmetic behind its ratios, FLOPs and memory figures, and the peers it compares against.
Correctness only: no timing assertions (speed is measured by `attnlab-bench`, docs/performance.md).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
import torch
from hydra import compose, initialize_config_module

from attnlab.config import ConfigError
from attnlab.model import Transformer
from attnlab.perf import bench, results
from attnlab.perf.flops import Gemm, forward_gemms, total_flops, train_gemms
from attnlab.perf.measure import interleaved_medians, peak_call_bytes, tensor_bytes
from attnlab.perf.peers import AttnlabSystem, TorchSystem, TorchTransformer
from attnlab.perf.workload import random_batch

TINY = [
    "vocab_size=40",
    "batch_size=3",
    "src_len=5",
    "tgt_len=4",
    "decode_len=4",
    "beam_size=2",
    "model.d_model=16",
    "model.d_ff=32",
    "model.n_heads=2",
    "model.encoder_layers=1",
    "model.decoder_layers=1",
    "warmup=1",
    "repeats=2",
]


def compose_bench(*overrides: str):
    with initialize_config_module("attnlab.conf", version_base="1.3"):
        return compose(config_name="bench", overrides=[*TINY, *overrides])


def check_results(out: dict, systems: list[str]) -> None:
    """Every field present; throughputs, ratios, MFU and targets agree with the raw medians."""
    assert list(out["systems"]) == systems
    cfg = out["config"]
    tokens, sentences = cfg["batch_size"] * cfg["tgt_len"], cfg["batch_size"]
    gemm = out["gemm"]
    assert gemm["train_flops"] > 0 and gemm["ceiling_s"] > 0
    assert gemm["ceiling_flops_per_s"] == pytest.approx(gemm["train_flops"] / gemm["ceiling_s"])
    for name, fig in out["systems"].items():
        assert {key for key, _, _ in results.METRICS} <= set(fig), name
        assert fig["train_tokens_per_s"] == pytest.approx(tokens / fig["train_step_s"])
        ceiling_s = statistics.median(out["times_s"]["gemm" if fig["precision"] == cfg["precision"] else "gemm/bf16"])
        assert fig["mfu"] == pytest.approx(ceiling_s / fig["train_step_s"])
        assert fig["greedy_sentences_per_s"] == pytest.approx(sentences / fig["greedy_s"])
        if name == "torch":  # the naive reference has no beam search
            assert fig["beam_s"] is None and fig["beam_sentences_per_s"] is None and fig["beam_peak_mib"] is None
        else:
            assert fig["beam_sentences_per_s"] == pytest.approx(sentences / fig["beam_s"])
            assert fig["beam_peak_mib"] > 0
        # Weights alone are a lower bound for every peak; training adds gradients and Adam state.
        assert fig["train_peak_mib"] > fig["greedy_peak_mib"] > 0
        for task in ("train", "greedy"):
            times = out["times_s"][f"{task}/{name}"]
            assert len(times) == cfg["repeats"]
            assert fig["train_step_s" if task == "train" else "greedy_s"] == pytest.approx(statistics.median(times))
    base = out["systems"]["attnlab"]
    for peer, row in out["ratios"].items():
        assert set(row) == set(results.RATIO_METRICS)
        for metric, value in row.items():
            if out["systems"][peer][metric] is None:
                assert value is None
            else:
                assert value == pytest.approx(base[metric] / out["systems"][peer][metric])
    for peer, row in out["paired_ratios"].items():
        for metric, task in results.TASKS.items():
            if f"{task}/{peer}" not in out["times_s"]:
                assert row[metric] is None
                continue
            per_round = [p / a for p, a in zip(out["times_s"][f"{task}/{peer}"], out["times_s"][f"{task}/attnlab"])]
            assert row[metric] == pytest.approx(statistics.median(per_round))
    light = out["lightning"]
    assert light["lightning_step_s"] > 0 and light["bare_step_s"] > 0
    assert light["overhead"] == pytest.approx(light["lightning_step_s"] / light["bare_step_s"] - 1)
    assert [t["name"] for t in out["targets"]] == [t[0] for t in results.TARGETS]
    mfu = next(t for t in out["targets"] if t["name"].startswith("attnlab MFU"))
    assert mfu["value"] == base["mfu"] and mfu["met"] == (base["mfu"] >= 0.75)
    gemm_over_step = [g / s for g, s in zip(out["times_s"]["gemm"], out["times_s"]["train/attnlab"])]
    assert mfu["paired"] == pytest.approx(statistics.median(gemm_over_step))


def test_bench_runs_end_to_end_and_its_json_is_consistent(tmp_path, capsys):
    cfg = compose_bench("systems=[attnlab,attnlab-bf16,torch]", f"output={tmp_path / 'bench.json'}")
    returned = bench.bench(cfg)
    out = json.loads((tmp_path / "bench.json").read_text())
    assert out["systems"] == returned["systems"]
    check_results(out, ["attnlab", "attnlab-bf16", "torch"])
    # attnlab-bf16: attnlab under bf16 autocast beside the fp32 systems, its MFU against the bf16 GEMMs
    bf16 = out["systems"]["attnlab-bf16"]
    assert [out["systems"][n]["precision"] for n in ("attnlab", "attnlab-bf16", "torch")] == ["fp32", "bf16", "fp32"]
    assert bf16["mfu"] == pytest.approx(statistics.median(out["times_s"]["gemm/bf16"]) / bf16["train_step_s"])
    assert out["meta"]["threads"] == torch.get_num_threads() and out["meta"]["versions"]["torch"] == torch.__version__
    printed = capsys.readouterr().out
    assert "attnlab / peer" in printed and "Lightning loop" in printed and "GEMM ceiling" in printed


def test_bench_with_marian(tmp_path):
    pytest.importorskip("transformers")
    cfg = compose_bench("systems=[attnlab,torch,marian]", f"output={tmp_path / 'bench.json'}")
    check_results(bench.bench(cfg), ["attnlab", "torch", "marian"])


def test_a_switch_marian_lacks_is_a_config_error_with_the_way_out():
    pytest.importorskip("transformers")
    with pytest.raises(ConfigError, match=r"model.norm=pre cannot be exported to Marian.*systems=\[attnlab,torch\]"):
        bench.run_benchmark(compose_bench("systems=[attnlab,torch,marian]", "model.norm=pre"))


def test_median_drops_warmup_and_is_the_middle_value():
    ticks = iter([9.0, 3.0, 1.0, 2.0, 100.0, 5.0, 6.0, 4.0])
    out = interleaved_medians({"a": lambda: next(ticks), "b": lambda: next(ticks)}, warmup=1, repeats=3)
    # Rounds alternate a, b: a gets 9 (warm-up), 1, 100, 6; b gets 3 (warm-up), 2, 5, 4.
    assert out["a"] == {"median_s": 6.0, "times_s": [1.0, 100.0, 6.0]}
    assert out["b"] == {"median_s": 4.0, "times_s": [2.0, 5.0, 4.0]}


def test_peak_call_bytes_counts_what_is_held_at_once():
    n = 250_000  # 1 MB of float32

    def two_then_one():
        a = torch.ones(n)
        b = torch.ones(2 * n)  # 3 MB held here
        del a, b
        return torch.ones(n)  # 1 MB

    peak = peak_call_bytes(two_then_one, torch.device("cpu"))
    assert 3 * 4 * n <= peak < 3 * 4 * n + 64 * 1024


def test_tensor_bytes_counts_shared_weights_once(tiny_config):
    model = Transformer(tiny_config(tie_embeddings="all"))
    distinct = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * 4 for b in model.buffers())
    assert tensor_bytes(model) == distinct
    opt = torch.optim.Adam(model.parameters())
    model(torch.tensor([[3, 4, 2]]), torch.tensor([[1, 3]])).sum().backward()
    opt.step()
    params = sum(p.numel() * 4 for p in model.parameters())
    # Adam keeps two moments per parameter (plus one scalar step counter each).
    assert tensor_bytes(opt) == 2 * params + 4 * len(list(model.parameters()))


def test_train_flops_are_three_times_the_forward_matmuls(tiny_config):
    cfg = tiny_config(d_model=16, d_ff=40, n_heads=4, encoder_layers=2, decoder_layers=3, src_vocab_size=50)
    B, S, T = 3, 7, 5
    d, f, V, dk, h = 16, 40, cfg.tgt_vocab_size, 4, 4
    weights = 2 * B * S * 2 * (4 * d * d + 2 * d * f)  # encoder: W_QKV, W_O, FFN
    weights += 2 * B * T * 3 * (4 * d * d + 2 * d * d + 2 * d * f) + 2 * B * S * 3 * 2 * d * d  # decoder, cross K|V
    weights += 2 * B * T * d * V  # output layer
    attention = 2 * 2 * B * h * dk * (2 * S * S + 3 * (T * T + T * S))
    assert total_flops(forward_gemms(cfg, B, S, T)) == weights + attention
    assert total_flops(train_gemms(cfg, B, S, T)) == 3 * (weights + attention)
    assert Gemm(2, 3, 5).backward() == (Gemm(2, 5, 3), Gemm(3, 2, 5))


def test_torch_peer_computes_the_same_function_shape(tiny_config):
    cfg = tiny_config(src_vocab_size=20, tgt_vocab_size=20, tie_embeddings="all", dropout=0.0)
    batch = random_batch(cfg, batch_size=3, src_len=6, tgt_len=5, seed=0, device="cpu")
    ours, peer = AttnlabSystem(cfg), TorchSystem(cfg)
    assert peer.logits(batch.src, batch.tgt_in).shape == ours.logits(batch.src, batch.tgt_in).shape == (3, 5, 20)
    # Same parameters, except that nn.Transformer always ends each stack with a LayerNorm.
    extra = 2 * 2 * cfg.d_model
    assert sum(p.numel() for p in peer.model.parameters()) == ours.model.num_parameters() + extra
    assert isinstance(peer.model, TorchTransformer)
    out = peer.greedy(batch.src, 4)
    assert out.shape == (3, 4) and not (out[:, :-1] == cfg.eos_id).any()
    assert ours.greedy(batch.src, 4).shape == (3, 4)
    assert ours.beam(batch.src, 4, 2).shape == (3, 1, 4)


def test_random_batch_is_dense_and_shifted():
    from attnlab.model import TransformerConfig

    cfg = TransformerConfig(src_vocab_size=30, tgt_vocab_size=30)
    b = random_batch(cfg, 4, 6, 5, seed=1, device="cpu")
    assert (b.tgt_in[:, 0] == cfg.bos_id).all() and torch.equal(b.tgt_in[:, 1:], b.tgt_out[:, :-1])
    assert (b.src[:, -1] == cfg.eos_id).all() and (b.tgt_out[:, -1] == cfg.eos_id).all()
    assert (b.src != cfg.pad_id).all() and b.target_tokens == 20
    assert torch.equal(b.src, random_batch(cfg, 4, 6, 5, seed=1, device="cpu").src)


@pytest.mark.parametrize(
    "override, key",
    [("systems=[attnlab,nope]", "systems"), ("precision=fp8", "precision"), ("decode_len=300", "model.max_len"),
     ("precision=bf16 systems=[attnlab,attnlab-bf16]", "attnlab-bf16")],  # fmt: skip
)
def test_bad_settings_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        bench.run_benchmark(compose_bench(*override.split()))


def test_command_reports_a_bad_setting_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "attnlab.perf.bench", "repeats=0", f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "attnlab-bench: error: repeats must be >= 1, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compiled_decoder_rows_get_their_own_targets():
    """With compile_decode=true the decoding targets are also reported for attnlab+compile
    (its figures over the peer's); a system timed for decoding only has no training figures."""
    times = {"greedy/attnlab+compile": {"median_s": 0.5}, "beam/attnlab+compile": {"median_s": 2.0}}
    compiled = results.system_figures(times, {}, "attnlab+compile", tokens=96, sentences=64, flops=10, ceiling=1.0)
    assert compiled["train_tokens_per_s"] is None and compiled["mfu"] is None
    assert compiled["greedy_sentences_per_s"] == 128 and compiled["beam_sentences_per_s"] == 32
    base = dict.fromkeys(compiled, 1.0) | {"greedy_sentences_per_s": 100.0, "beam_sentences_per_s": 20.0}
    marian = base | {"greedy_sentences_per_s": 80.0, "beam_sentences_per_s": 20.0}
    systems = {"attnlab": base, "marian": marian, "attnlab+compile": compiled}
    rows = {t["name"]: t for t in results.targets(systems, results.ratios(systems), None)}
    assert rows["greedy sentences/s vs marian"]["value"] == pytest.approx(1.25)
    assert rows["greedy sentences/s vs marian (attnlab+compile)"]["value"] == pytest.approx(1.6)
    assert rows["greedy sentences/s vs marian (attnlab+compile)"]["met"] is True
    assert rows["beam-4 sentences/s vs marian (attnlab+compile)"]["value"] == pytest.approx(1.6)
    assert rows["beam-4 sentences/s vs marian (attnlab+compile)"]["met"] is False
    assert len(rows) == len(results.TARGETS) + 2


def test_paired_ratios_follow_the_rounds_not_the_medians():
    """On a host that slows down mid-run, the ratio of medians mixes rounds of different speed;
    the per-round ratio compares each round's pair. Made-up times: attnlab is 2x faster than
    the peer in every round but one, where the host slowed between the peer's turn and attnlab's."""
    attnlab, marian = [1.0, 1.0, 3.0, 3.0, 3.0], [2.0, 2.0, 2.0, 6.0, 6.0]
    times = {
        "train/attnlab": {"times_s": attnlab, "median_s": statistics.median(attnlab)},
        "train/marian": {"times_s": marian, "median_s": statistics.median(marian)},
        "gemm": {"times_s": [0.5, 0.5, 1.5, 1.5, 0.3], "median_s": 0.5},
        "greedy/attnlab": {"times_s": [1.0] * 5, "median_s": 1.0},  # no greedy timing of the peer
    }
    assert times["train/marian"]["median_s"] / times["train/attnlab"]["median_s"] == pytest.approx(2 / 3)
    paired = results.paired_ratios(times, {"attnlab": {}, "marian": {}})
    assert paired == {
        "marian": {"train_tokens_per_s": 2.0, "greedy_sentences_per_s": None, "beam_sentences_per_s": None}
    }
    figures = {"attnlab": {"mfu": 1 / 6, "train_tokens_per_s": 1 / 3}, "marian": {"train_tokens_per_s": 0.5}}
    rows = {t["name"]: t for t in results.targets(figures, results.ratios(figures), None, times)}
    assert rows["train tokens/s vs marian"]["value"] == pytest.approx(2 / 3)  # `met` stays on the medians
    assert rows["train tokens/s vs marian"]["paired"] == pytest.approx(2.0)
    assert rows["attnlab MFU (share of the GEMM ceiling)"]["paired"] == pytest.approx(0.5)  # 0.5, 0.5, 0.5, 0.5, 0.1
    assert rows["Lightning loop overhead"]["paired"] is None
    assert rows["train peak memory vs marian"]["paired"] is None


@pytest.mark.slow  # Inductor compiles the decoder step (about a minute)
def test_bench_times_the_compiled_decoders(tmp_path):
    cfg = compose_bench("systems=[attnlab]", "compile_decode=true", "lightning=false", f"output={tmp_path / 'b.json'}")
    out = bench.bench(cfg)
    compiled = out["systems"]["attnlab+compile"]
    assert compiled["train_step_s"] is None and "train/attnlab+compile" not in out["times_s"]
    assert compiled["greedy_s"] > 0 and compiled["beam_s"] > 0 and compiled["beam_peak_mib"] > 0
    assert out["ratios"]["attnlab+compile"]["greedy_sentences_per_s"] == pytest.approx(
        out["systems"]["attnlab"]["greedy_sentences_per_s"] / compiled["greedy_sentences_per_s"]
    )
