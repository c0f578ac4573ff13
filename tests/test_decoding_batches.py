"""How translate_ids decodes a trained model. `decode.precision`: bf16 and int8 copies decode what fp32
decodes (nearly), the trained model is left as it was, int8 quantises the layers it names, impossible
combinations are refused, and attnlab-eval takes the key from its command line. Batches on several cores
(decoding_workers): the outputs and scores equal one-at-a-time decoding, torch's thread count is restored,
and an error in a worker reaches the caller. (One module: the trained fixture is built once per module.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attnlab import evaluate
from attnlab.checkpoint import load_for_inference
from attnlab.data.datamodule import TranslationDataModule
from attnlab.decoding import DecodeConfig
from attnlab.decoding.batch import decoding_workers, fit_sources, translate_ids
from attnlab.decoding.precision import for_decoding, int8_layers
from attnlab.errors import ConfigError
from fixtures_ckpt import DATA, trained_run  # noqa: F401
from test_eval_translate import run_app  # noqa: F401


@pytest.fixture(scope="module")
def trained(trained_run):  # noqa: F811
    return load_for_inference(trained_run / "checkpoints" / "last.ckpt")


def _decode(trained, precision: str, strategy: str) -> tuple[list[str], list[str]]:
    src, ref = TranslationDataModule(**DATA, seed=0).read_split("test")
    ids = fit_sources([trained.src_tokenizer.encode(s) for s in src], trained.model)
    config = DecodeConfig(strategy=strategy, beam_size=3, max_len_b=4, precision=precision)
    out = translate_ids(trained.model, ids, config, batch_size=32)
    return [trained.tgt_tokenizer.decode(n_best[0][0]) for n_best in out], ref


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_low_precision_decodes_what_fp32_decodes(trained, precision, strategy):
    before = {k: v.clone() for k, v in trained.model.state_dict().items()}
    fp32, ref = _decode(trained, "fp32", strategy)
    low, _ = _decode(trained, precision, strategy)
    exact = lambda hyps: sum(h == r for h, r in zip(hyps, ref)) / len(ref)
    assert exact(fp32) >= 0.9
    assert exact(low) >= exact(fp32) - 0.05, (precision, exact(low), exact(fp32))
    assert sum(a == b for a, b in zip(low, fp32)) / len(ref) >= 0.9
    after = trained.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the trained model was changed"
    assert next(trained.model.parameters()).dtype == torch.float32


def test_int8_quantises_every_linear_layer_but_the_sliced_in_proj(trained):
    model = trained.model
    names = int8_layers(model)
    linear = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert "generator" in names and not any(n.endswith("in_proj") for n in names)
    assert names == {n for n in linear if not n.endswith("in_proj")}
    quantised = for_decoding(model, "int8")
    modules = dict(quantised.named_modules())
    for name in names:
        assert type(modules[name]).__module__.startswith("torch.ao.nn.quantized.dynamic"), name
    assert isinstance(modules["encoder.layers.0.self_attn.in_proj"], nn.Linear)
    bf16 = for_decoding(model, "bf16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert for_decoding(model, "fp32") is model


def test_impossible_precisions_are_refused(trained):
    with pytest.raises(ConfigError, match="decode.precision=int8 cannot run under decode.compile=true"):
        for_decoding(trained.model, "int8", compile=True)
    with pytest.raises(ConfigError, match=r"decode.precision='fp16' is not one of \['fp32', 'bf16', 'int8'\]"):
        DecodeConfig(precision="fp16")


def test_eval_takes_the_precision_from_its_command_line(trained_run, tmp_path, run_app):  # noqa: F811
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    status, out, err = run_app(evaluate, f"ckpt={ckpt}", "decode.precision=int8", f"paths.log_dir={tmp_path}")
    assert status == 0, err
    assert "precision=int8" in out
    [results] = tmp_path.glob("eval/runs/*/results.json")
    import json

    record = json.loads(results.read_text())
    assert record["decode"]["precision"] == "int8" and record["metrics"]["exact_match"] >= 0.85


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_batches_on_several_cores_decode_what_one_at_a_time_decodes(trained, strategy):
    src, _ = TranslationDataModule(**DATA, seed=0).read_split("test")
    ids = fit_sources([trained.src_tokenizer.encode(s) for s in src], trained.model)
    config = DecodeConfig(strategy=strategy, beam_size=3, n_best=2 if strategy == "beam" else 1, max_len_b=4)
    before = torch.get_num_threads()
    alone = translate_ids(trained.model, ids, config, batch_size=16, workers=1)
    together = translate_ids(trained.model, ids, config, batch_size=16, workers=3)
    assert together == alone  # the same hypotheses, in input order, with the same scores
    assert len(together) == len(ids) and len({tuple(n[0][0]) for n in together}) > 10
    assert torch.get_num_threads() == before


def test_workers_default_to_the_cores_on_a_cpu_and_one_when_compiled(trained):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert decoding_workers(torch.device("cpu"), compile=False) == 2
        assert decoding_workers(torch.device("cpu"), compile=True) == 1
        assert decoding_workers(torch.device("cuda"), compile=False) == 1
    finally:
        torch.set_num_threads(before)


def test_an_error_in_a_worker_reaches_the_caller(trained):
    vocab = trained.model.config.src_vocab_size
    ids = [[5, 6, trained.model.config.eos_id]] * 40 + [[vocab + 7, trained.model.config.eos_id]]
    before = torch.get_num_threads()
    with pytest.raises(IndexError):
        translate_ids(trained.model, ids, DecodeConfig(), batch_size=8, workers=2)
    assert torch.get_num_threads() == before
