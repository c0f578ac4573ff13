"""translate_ids decodes several batches at once on a CPU, one core each (decoding_workers): the
outputs and scores equal one-at-a-time decoding, torch's thread count is restored, and an error in
a worker reaches the caller."""

from __future__ import annotations

import pytest
import torch

from attnlab.checkpoint import load_for_inference
from attnlab.data.datamodule import TranslationDataModule
from attnlab.decoding import DecodeConfig
from attnlab.decoding.batch import decoding_workers, fit_sources, translate_ids
from fixtures_ckpt import DATA, trained_run  # noqa: F401


@pytest.fixture(scope="module")
def trained(trained_run):  # noqa: F811
    return load_for_inference(trained_run / "checkpoints" / "last.ckpt")


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
