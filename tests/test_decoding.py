"""Greedy and beam search (attnlab.decoding): the key/value cache changes nothing, beam search
finds what greedy misses, n-best lists, length penalty, batching, length limits and scores.

Two kinds of model: tiny random `Transformer`s over the ablation grid (the cache and batching
tests), and `TableModel`, a decoder whose next-token distribution is a fixed table indexed by
the previous token, so the best sequence is known by hand (the search tests).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from torch.nn.utils.rnn import pad_sequence

from attnlab.decoding import DecodeConfig, beam_search, decode, generate, greedy_search, length_penalty, output_limits
from attnlab.errors import ConfigError
from attnlab.model import Transformer, TransformerConfig
from attnlab.model.positional import POSITIONAL

PAD, BOS, EOS, A, B_, C = 0, 1, 2, 3, 4, 5
GRID = list(itertools.product(list(POSITIONAL), [True, False], ["post", "pre"]))


def random_sources(n: int, vocab: int, lengths=(3, 9), seed: int = 0) -> torch.Tensor:
    """n sentences of random content tokens + EOS, right-padded: (n, S)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
        rows.append(torch.cat([torch.randint(3, vocab, (length,), generator=g), torch.tensor([EOS])]))
    return pad_sequence(rows, batch_first=True, padding_value=PAD)


def tiny_model(tiny_config, **switches) -> Transformer:
    return Transformer(tiny_config(**switches)).eval()


def strip(row: list[int]) -> list[int]:
    """Output ids up to and including EOS (decoders pad after it)."""
    return row[: row.index(EOS) + 1] if EOS in row else [t for t in row if t != PAD]


def model_log_prob(model, src: torch.Tensor, out: list[int]) -> float:
    """Teacher-forced sum of log p(token) of one output (EOS included) under the model."""
    tgt_in = torch.tensor([[BOS] + out[:-1]])
    with torch.no_grad():
        logp = model(src[None], tgt_in).log_softmax(-1)[0]  # (T, V)
    return float(logp.gather(1, torch.tensor(out)[:, None]).sum())


# -- a model whose best sequence is known ------------------------------------------------------


class TableCache:
    """What TableModel needs between steps: the number of tokens read so far (no encoder
    keys/values: the source is ignored)."""

    def __init__(self, src_mask: torch.Tensor):
        self.length, self.memory_kv, self.src_mask = 0, [], src_mask

    def reorder(self, index: torch.Tensor, sentences: torch.Tensor | None = None) -> None:
        pass  # the next distribution depends on the newest token only: nothing to reorder


class TableModel(torch.nn.Module):
    """p(next | previous token) = table[previous]: a bigram decoder with the Transformer's decoding API.

    Rows and columns are token ids; the source is ignored. Probabilities not given are spread
    evenly over what is left, so every row is a distribution.
    """

    def __init__(self, rows: dict[int, dict[int, float]], vocab: int = 6, max_len: int = 32):
        super().__init__()
        self.config = TransformerConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=4, d_ff=4, n_heads=1,
                                        encoder_layers=0, decoder_layers=1, max_len=max_len)  # fmt: skip
        table = torch.full((vocab, vocab), 0.0)
        for prev in range(vocab):
            given = rows.get(prev, {})
            free = [t for t in range(3, vocab) if t not in given] + ([EOS] if EOS not in given else [])
            rest = max(0.0, 1.0 - sum(given.values()))
            for t in free:
                table[prev, t] = rest / len(free) if rest > 0 else 1e-6
            for t, p in given.items():
                table[prev, t] = p
        self.log_table = (table / table.sum(1, keepdim=True)).clamp_min(1e-30).log()
        self.log_table[:, [PAD, BOS]] = -1e9  # never outputs, as in a trained model

    def encode(self, src):
        return src[:, :, None].float(), (src != PAD)[:, None, None, :]

    def start_decoding(self, memory, src_mask, capacity=None, indirect=False):
        return TableCache(src_mask)

    def decode_step(self, tokens, cache):
        cache.length += 1
        return self.log_table[tokens]  # (N, V): log-probs are valid logits

    def decode(self, tgt_in, memory, src_mask):
        return self.log_table[tgt_in]  # (N, T, V)

    def seq_log_prob(self, out: list[int]) -> float:
        return sum(float(self.log_table[p, t]) for p, t in zip([BOS] + out[:-1], out))


ONE_SRC = torch.tensor([[A, A, EOS]])

# Greedy takes A (0.6), then its best is EOS (0.4): p = 0.24. Beam search also keeps B (0.4),
# whose EOS is nearly certain (0.9): p = 0.36, the most probable output of all (A... <= 0.6*0.4).
GREEDY_TRAP = {BOS: {A: 0.6, B_: 0.4, EOS: 0.0}, A: {EOS: 0.4, A: 0.3, B_: 0.3}, B_: {EOS: 0.9, A: 0.05, B_: 0.05}}


def test_greedy_is_provably_suboptimal_and_beam_finds_the_best_sequence():
    model = TableModel(GREEDY_TRAP)
    greedy, greedy_score = greedy_search(model, ONE_SRC, max_len_b=5, with_scores=True)
    assert strip(greedy[0].tolist()) == [A, EOS]
    assert float(greedy_score[0]) == pytest.approx(math.log(0.24), abs=1e-5)

    tokens, scores = beam_search(model, ONE_SRC, beam_size=2, max_len_b=5)
    assert strip(tokens[0, 0].tolist()) == [B_, EOS]
    assert float(scores[0, 0]) == pytest.approx(math.log(0.36), abs=1e-5)
    assert float(scores[0, 0]) > float(greedy_score[0])


def test_length_penalty_changes_the_choice():
    # "EOS" at once: p = 0.5. "A EOS": p = 0.49 * 0.99 = 0.485, lower by log-prob, but with the
    # paper's alpha = 0.6: log(0.485) / ((5+2)/6)^0.6 = -0.660 > log(0.5) / 1 = -0.693.
    model = TableModel({BOS: {EOS: 0.5, A: 0.49}, A: {EOS: 0.99}})
    plain, plain_scores = beam_search(model, ONE_SRC, beam_size=2, n_best=2, length_penalty_alpha=0.0)
    assert strip(plain[0, 0].tolist()) == [EOS]
    assert strip(plain[0, 1].tolist()) == [A, EOS]

    pen, pen_scores = beam_search(model, ONE_SRC, beam_size=2, n_best=2, length_penalty_alpha=0.6)
    assert strip(pen[0, 0].tolist()) == [A, EOS]
    assert strip(pen[0, 1].tolist()) == [EOS]
    # Scores stay plain log-probabilities: the penalty only ranks.
    assert float(pen_scores[0, 0]) == pytest.approx(math.log(0.49 * 0.99), abs=1e-5)
    assert float(pen_scores[0, 1]) == pytest.approx(math.log(0.5), abs=1e-5)
    assert length_penalty(2, 0.6) == pytest.approx((7 / 6) ** 0.6)
    assert length_penalty(5, 0.0) == 1.0


def test_n_best_hypotheses_are_distinct_and_sorted():
    model = TableModel(GREEDY_TRAP)
    tokens, scores = beam_search(model, ONE_SRC, beam_size=4, n_best=4, max_len_b=5)
    hyps = [strip(t) for t in tokens[0].tolist()]
    assert len({tuple(h) for h in hyps}) == 4
    assert scores[0].tolist() == sorted(scores[0].tolist(), reverse=True)
    for hyp, score in zip(hyps, scores[0].tolist()):
        assert score == pytest.approx(model.seq_log_prob(hyp), abs=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_n_best_on_a_transformer_distinct_and_sorted_by_penalised_score(tiny_config, alpha):
    model = tiny_model(tiny_config)
    src = random_sources(4, 13)
    tokens, scores = beam_search(model, src, beam_size=5, n_best=5, max_len_b=4, length_penalty_alpha=alpha)
    assert tokens.shape[:2] == (4, 5) and scores.shape == (4, 5)
    for b in range(4):
        hyps = [strip(t) for t in tokens[b].tolist()]
        assert len({tuple(h) for h in hyps}) == 5, hyps
        ranks = [s / length_penalty(len(h), alpha) for h, s in zip(hyps, scores[b].tolist())]
        assert ranks == sorted(ranks, reverse=True)


def test_beam_size_one_is_greedy(tiny_config):
    for switches in [{}, {"positional": "rope", "norm": "pre"}]:
        model = tiny_model(tiny_config, **switches)
        src = random_sources(6, 13)
        greedy, greedy_scores = greedy_search(model, src, max_len_b=6, with_scores=True)
        beam, beam_scores = beam_search(model, src, beam_size=1, max_len_b=6)
        assert [strip(r) for r in greedy.tolist()] == [strip(r) for r in beam[:, 0].tolist()]
        torch.testing.assert_close(beam_scores[:, 0], greedy_scores, atol=1e-5, rtol=0)


# -- the cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("positional,residual,norm", GRID)
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_cached_decoding_equals_uncached_reference(tiny_config, positional, residual, norm, strategy):
    # Without residual connections a random 2+2-layer model collapses: its output no longer depends
    # on the prefix (1e-7), and a broken cache would go unseen. One layer each keeps it visible.
    depth = {} if residual else dict(encoder_layers=1, decoder_layers=1)
    model = tiny_model(tiny_config, positional=positional, residual=residual, norm=norm, **depth)
    src = random_sources(5, 13)
    # min_len keeps random models from stopping at once, so the cache is used over many steps.
    settings = dict(strategy=strategy, beam_size=3, n_best=3 if strategy == "beam" else 1, length_penalty=0.6,
                    max_len_b=6, min_len=4)  # fmt: skip
    cached, cached_scores = decode(model, src, **settings)
    plain, plain_scores = decode(model, src, **settings, use_cache=False)
    assert cached.shape == plain.shape and cached.size(2) >= 5
    torch.testing.assert_close(cached_scores, plain_scores, atol=1e-5, rtol=0)
    for b, n in itertools.product(range(src.size(0)), range(cached.size(1))):
        # Two outputs of equal log-prob (a tie) may come out either way: float noise of 1e-7 picks.
        if not torch.equal(cached[b, n], plain[b, n]):
            src_b = src[b, : int((src[b] != PAD).sum())]
            ours, theirs = strip(cached[b, n].tolist()), strip(plain[b, n].tolist())
            assert model_log_prob(model, src_b, ours) == pytest.approx(model_log_prob(model, src_b, theirs), abs=1e-5)
    if residual:  # the grid's models with residual connections have no ties: all tokens equal
        assert torch.equal(cached, plain)


@pytest.mark.parametrize(
    "positional,norm", [("sinusoidal", "post"), ("rope", "pre"), ("learned", "post"), ("alibi", "pre")]
)
@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_indirect_cache_decodes_like_the_copying_cache(tiny_config, monkeypatch, positional, norm, strategy):
    """The cache decode.compile uses (rows index the stored keys; nothing is copied on reorder),
    run eagerly: the same tokens and scores as the default cache, with sentences leaving the
    batch at different steps and beam search's rows multiplied after its first step."""
    model = tiny_model(tiny_config, positional=positional, norm=norm)
    src = random_sources(6, 13, lengths=(1, 10), seed=4)
    settings = dict(strategy=strategy, beam_size=3, n_best=3 if strategy == "beam" else 1, length_penalty=0.6,
                    max_len_b=6)  # fmt: skip
    want_tokens, want_scores = decode(model, src, **settings)
    kinds = []

    def start_indirect(memory, src_mask, capacity=None, indirect=False):
        cache = Transformer.start_decoding(model, memory, src_mask, capacity, indirect=True)
        kinds.append(type(cache.self_kv[0]).__name__)
        return cache

    monkeypatch.setattr(model, "start_decoding", start_indirect)
    tokens, scores = decode(model, src, **settings)
    assert kinds == ["IndirectKVCache"]
    assert torch.equal(tokens, want_tokens)
    torch.testing.assert_close(scores, want_scores, atol=1e-5, rtol=0)


def test_cached_step_reads_one_position_at_a_time(tiny_config):
    """Each decode_step embeds one new position; the cache grows by exactly one per step."""
    model = tiny_model(tiny_config, positional="learned")
    memory, mask = model.encode(random_sources(2, 13))
    cache = model.start_decoding(memory, mask)
    prefix = torch.full((2, 1), BOS)
    for step in range(4):
        logits = model.decode_step(prefix[:, -1], cache)
        assert cache.length == step + 1 and cache.self_kv[0].length == step + 1
        full = model.decode(prefix, memory, mask)[:, -1]
        torch.testing.assert_close(logits, full, atol=1e-5, rtol=0)
        prefix = torch.cat([prefix, logits.argmax(-1, keepdim=True)], 1)


# -- batching, limits, scores ------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "alibi"])
def test_batched_decoding_equals_one_sentence_at_a_time(tiny_config, strategy, positional):
    model = tiny_model(tiny_config, positional=positional, norm="pre")
    src = random_sources(7, 13, lengths=(1, 12))
    assert (src == PAD).any(), "the batch must hold padding for this test to mean anything"
    settings = dict(strategy=strategy, beam_size=3, n_best=2 if strategy == "beam" else 1, max_len_b=5, min_len=2)
    tokens, scores = decode(model, src, **settings)
    for i in range(src.size(0)):
        alone = src[i : i + 1, : int((src[i] != PAD).sum())]  # no padding at all
        one_tokens, one_scores = decode(model, alone, **settings)
        for n in range(tokens.size(1)):
            assert strip(tokens[i, n].tolist()) == strip(one_tokens[0, n].tolist()), (i, n)
        torch.testing.assert_close(scores[i], one_scores[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
@pytest.mark.parametrize("a,b", [(1.0, 0), (1.0, 3), (0.5, 2), (2.0, 1)])
def test_output_length_limit_is_a_times_source_length_plus_b(strategy, a, b):
    # A model that never wants to stop: EOS has probability 1e-4 everywhere.
    model = TableModel({t: {EOS: 1e-4} for t in range(6)}, max_len=32)
    src = pad_sequence([torch.tensor([A] * n + [EOS]) for n in (1, 3, 6)], batch_first=True)
    tokens, _ = decode(model, src, strategy=strategy, beam_size=2, max_len_a=a, max_len_b=b)
    for row, src_len in zip(tokens[:, 0].tolist(), (2, 4, 7)):  # source lengths count EOS
        out = strip(row)
        assert len(out) == max(1, int(a * src_len) + b), (row, src_len)
        assert out[-1] == EOS  # the limit ends a hypothesis properly, with EOS


def test_length_limit_never_exceeds_model_max_len(tiny_config):
    model = tiny_model(tiny_config, positional="learned")  # max_len=32 learned positions
    src = random_sources(3, 13)
    limits = output_limits(model, src, max_len_a=1.0, max_len_b=100)
    assert limits.tolist() == [32, 32, 32]
    for strategy in ("greedy", "beam"):
        tokens, _ = decode(model, src, strategy=strategy, beam_size=2, max_len_b=100, min_len=1000)
        lengths = [len(strip(r)) for r in tokens[:, 0].tolist()]
        assert lengths == [32, 32, 32]


@pytest.mark.parametrize("strategy,alpha", [("greedy", 0.0), ("beam", 0.0), ("beam", 1.0)])
def test_scores_are_the_models_log_probabilities_of_the_returned_tokens(tiny_config, strategy, alpha):
    model = tiny_model(tiny_config, positional="rope", norm="pre")
    src = random_sources(4, 13)
    tokens, scores = decode(model, src, strategy=strategy, beam_size=3, n_best=3 if strategy == "beam" else 1,
                            length_penalty=alpha, max_len_b=5, min_len=2)  # fmt: skip
    assert (scores <= 0).all()
    for i in range(src.size(0)):
        src_i = src[i, : int((src[i] != PAD).sum())]
        for n in range(tokens.size(1)):
            out = strip(tokens[i, n].tolist())
            assert float(scores[i, n]) == pytest.approx(model_log_prob(model, src_i, out), abs=1e-4)


@pytest.mark.parametrize("rows, width, k", [(64, 32000, 8), (3, 32003, 8), (5, 1000, 8), (2, 20000, 3)])
def test_chunked_topk_equals_torch_topk(rows, width, k):
    """Beam search's candidate selection: the same values and positions as torch.topk,
    including rows with -inf (forbidden tokens) and widths that are not whole chunks."""
    from attnlab.decoding.topk import topk

    scores = torch.randn(rows, width, generator=torch.Generator().manual_seed(width))
    scores[:, ::7] = float("-inf")
    scores[0, 5000 % width] = 50.0  # one clear winner far from the others
    values, index = topk(scores, k)
    expected_values, expected_index = scores.topk(k, dim=1)
    assert torch.equal(values, expected_values) and torch.equal(index, expected_index)


def test_decode_shapes_and_a_bad_strategy(tiny_config):
    model = tiny_model(tiny_config)
    src = random_sources(3, 13)
    tokens, scores = decode(model, src, strategy="greedy")
    assert tokens.dim() == 3 and tokens.size(1) == 1 and scores.shape == (3, 1)
    with pytest.raises(ValueError, match="decode.strategy='sample'"):
        decode(model, src, strategy="sample")
    with pytest.raises(ValueError, match="n_best"):
        beam_search(model, src, beam_size=2, n_best=3)


# -- decode.compile ------------------------------------------------------------------------------


@pytest.mark.parametrize("positional", ["rope", pytest.param("alibi", marks=pytest.mark.slow)])
def test_compiled_step_gives_the_eager_results(tiny_config, positional):
    """decode.compile=true runs the cached step under torch.compile (a few graphs here: the second
    step's, then one for every later length): the same tokens and scores as the eager step, for
    greedy search and for beam search (whose compiled step reads the keys through its rows'
    history, IndirectKVCache, and attends by sums). The choice is per call: nothing is left on
    the model, which still pickles. With alibi the step's score bias comes from its position."""
    import pickle

    from torch._dynamo.utils import counters

    model = tiny_model(tiny_config, positional=positional, norm="pre")
    src = random_sources(5, 13, lengths=(2, 9), seed=3)
    forced = dict(max_len=8, min_len=7)  # every row runs all 8 steps: no rows leave
    searches = {
        "greedy": lambda **kw: greedy_search(model, src, with_scores=True, **forced, **kw),
        "beam": lambda **kw: beam_search(model, src, beam_size=3, n_best=3, **forced, **kw),
    }
    for name, search in searches.items():
        want_tokens, want_scores = search()
        graphs = counters["stats"]["unique_graphs"]
        tokens, scores = search(compile=True)
        assert counters["stats"]["unique_graphs"] > graphs, f"the {name} step did not run compiled"
        assert tokens.size(-1) == 8 and torch.equal(tokens, want_tokens), name
        torch.testing.assert_close(scores, want_scores, atol=1e-5, rtol=0)
    assert "decode_step" not in vars(model)
    pickle.dumps(model)


@pytest.mark.slow  # about two minutes: Inductor compiles seven graphs
def test_compiled_decoder_step_gives_the_eager_results(tiny_config):
    """The same for greedy and beam search, across batches whose size and source length differ
    and whose sentences finish at different steps (rows leave mid-search: dynamic shapes)."""
    model = tiny_model(tiny_config, positional="rope", norm="pre")
    batches = [random_sources(7, 13, lengths=(1, 12), seed=1), random_sources(4, 13, lengths=(2, 6), seed=2)]
    for src in batches:
        assert (src == PAD).any()
        for settings in (dict(strategy="greedy"), dict(strategy="beam", beam_size=3, n_best=2, length_penalty=0.6)):
            want_tokens, want_scores = decode(model, src, max_len_b=6, **settings)
            tokens, scores = decode(model, src, max_len_b=6, compile=True, **settings)
            assert torch.equal(tokens, want_tokens), settings
            torch.testing.assert_close(scores, want_scores, atol=1e-5, rtol=0)


# -- decode.*: one typed DecodeConfig ------------------------------------------------------------

# The one rule set for beam_size and n_best, and its message (the schema's validation, attnlab-eval
# and attnlab-translate give the same: tests/test_eval_translate.py).
REFUSED = {
    "n_best > beam_size": (dict(strategy="beam", beam_size=2, n_best=3),
                           "decode.n_best=3 must be in [1, decode.beam_size=2]"),
    "n_best > 1 under greedy": (dict(strategy="greedy", n_best=2), "decode.n_best=2 needs decode=beam"),
    "n_best > beam_size under greedy": (dict(strategy="greedy", beam_size=2, n_best=3),
                                        "decode.n_best=3 needs decode=beam"),
    "n_best 0": (dict(strategy="greedy", n_best=0), "decode.n_best=0 must be in [1, decode.beam_size=4]"),
    "beam_size 0": (dict(strategy="greedy", beam_size=0), "decode.beam_size=0 must be >= 1"),
    "unknown strategy": (dict(strategy="sample"), "decode.strategy='sample' is not one of ['greedy', 'beam']"),
    "a word for a number": (dict(beam_size="four"), "decode.beam_size='four' must be a whole number"),
    "a fraction for a whole number": (dict(max_len_b=2.5), "decode.max_len_b=2.5 must be a whole number"),
    "a bool for a number": (dict(length_penalty=True), "decode.length_penalty=True must be a number"),
    "a string for a bool": (dict(compile="yes"), "decode.compile='yes' must be true or false"),
    "an unknown key": (dict(beams=4), "decode.beams is not a decode setting; valid keys under decode: strategy,"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(REFUSED))
def test_decode_config_refuses_impossible_settings_naming_the_key(case):
    settings, message = REFUSED[case]
    with pytest.raises(ConfigError) as refused:
        DecodeConfig.from_dict(settings)
    assert str(refused.value).startswith(message), str(refused.value)


def test_beam_search_and_generate_refuse_by_the_same_rule(tiny_config):
    model, src = tiny_model(tiny_config), random_sources(2, 13)
    with pytest.raises(ConfigError, match=r"decode.n_best=3 must be in \[1, decode.beam_size=2\]"):
        beam_search(model, src, beam_size=2, n_best=3)
    with pytest.raises(ConfigError, match=r"decode.n_best=3 must be in \[1, decode.beam_size=2\]"):
        generate(model, src, strategy="beam", beam_size=2, n_best=3)
    with pytest.raises(ConfigError, match="decode.n_best=2 needs decode=beam"):
        generate(model, src, DecodeConfig(), n_best=2)
    with pytest.raises(TypeError, match="DecodeConfig"):
        generate(model, src, {"strategy": "beam"})


def test_decode_config_types_defaults_and_record():
    config = DecodeConfig.from_dict({"strategy": "beam", "length_penalty": 1, "max_len_a": 2})
    assert config.length_penalty == 1.0 and isinstance(config.length_penalty, float)
    assert isinstance(config.max_len_a, float)
    assert config == DecodeConfig(strategy="beam", length_penalty=1.0, max_len_a=2.0)
    # result.json's and protocol.json's `decode`: the training keys; min_len only once it is set
    assert list(config.to_dict()) == ["strategy", "beam_size", "n_best", "length_penalty", "max_len_a", "max_len_b",
                                      "compile"]  # fmt: skip
    assert config.replace(min_len=3).to_dict()["min_len"] == 3
    assert DecodeConfig.from_dict(config.to_dict()) == config
    assert config.describe() == "strategy=beam beam_size=4 length_penalty=1.0 max_len_a=2.0 max_len_b=50 n_best=1"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_best = 2


def test_the_training_schema_is_the_decode_config_less_the_inference_only_keys():
    from attnlab.config import DecodeSchema
    from attnlab.decoding.config import INFERENCE_ONLY

    schema = {f.name: f.default for f in dataclasses.fields(DecodeSchema)}
    typed = {f.name: f.default for f in dataclasses.fields(DecodeConfig) if f.name not in INFERENCE_ONLY}
    assert schema == typed and INFERENCE_ONLY == {"min_len", "precision"}


@pytest.mark.parametrize(
    "command_line,want",
    [({}, dict(strategy="beam", beam_size=3, length_penalty=1.0, max_len_b=4)),
     ({"length_penalty": 0.3}, dict(strategy="beam", beam_size=3, length_penalty=0.3, max_len_b=4)),
     ({"strategy": "greedy"}, dict(strategy="greedy", beam_size=3, length_penalty=1.0, max_len_b=4)),
     ({"compile": True}, dict(strategy="beam", beam_size=3, length_penalty=1.0, max_len_b=4, compile=True))],
)  # fmt: skip
def test_a_checkpoints_decoding_is_its_runs_under_the_command_line(command_line, want):
    """The run's decode.* (here beam 3, alpha 1.0, b=4, compiled) wins over the command's defaults
    (beam 4, alpha 0.6, b=50), a key given on the command line over the run's, and compile (speed
    only) is never taken from the run."""
    command = {**DecodeConfig(strategy="beam").to_dict(), **command_line}
    run = dict(strategy="beam", beam_size=3, n_best=1, length_penalty=1.0, max_len_a=1.0, max_len_b=4, compile=True)
    assert DecodeConfig.for_checkpoint(command, run, set(command_line)) == DecodeConfig(**want)


def test_a_greedy_run_given_a_beam_only_key_decodes_with_beam_search():
    command = DecodeConfig(strategy="beam").to_dict()
    run = DecodeConfig(strategy="greedy", max_len_b=4).to_dict()
    assert DecodeConfig.for_checkpoint(command, run, set()).strategy == "greedy"
    for key, value in (("n_best", 2), ("beam_size", 6), ("length_penalty", 0.2)):
        chosen = DecodeConfig.for_checkpoint({**command, key: value}, run, {key})
        assert chosen.strategy == "beam" and getattr(chosen, key) == value and chosen.max_len_b == 4
    # decode=greedy given with it: the rule refuses rather than choosing for the user
    with pytest.raises(ConfigError, match="decode.n_best=2 needs decode=beam"):
        DecodeConfig.for_checkpoint({**command, "strategy": "greedy", "n_best": 2}, run, {"strategy", "n_best"})


def test_generate_with_a_config_is_decode_with_its_keys(tiny_config):
    """attnlab.decoding.decode (the old name, kept) is generate; a DecodeConfig and keyword
    arguments give the same search, and the LightningModule holds a DecodeConfig of its decode.*
    and decodes its best hypotheses with it."""
    from attnlab.data.tokenizers import content_ids
    from attnlab.lit_module import TranslationModule

    assert decode is generate
    model, src = tiny_model(tiny_config), random_sources(4, 13)
    config = DecodeConfig(strategy="beam", beam_size=3, n_best=2, length_penalty=0.6, max_len_b=5, min_len=2)
    by_config, by_keys = generate(model, src, config), decode(model, src, **dataclasses.asdict(config))
    assert torch.equal(by_config[0], by_keys[0]) and torch.equal(by_config[1], by_keys[1])
    assert by_config[0].size(1) == 2
    module = TranslationModule(model=model.config.to_dict(), optim={}, decode={"strategy": "beam", "max_len_b": 5})
    assert module.decode_config == DecodeConfig(strategy="beam", max_len_b=5)
    module.model.load_state_dict(model.state_dict())
    # its best hypothesis per sentence: decode.* (beam here), or greedy search for validation's scores
    for greedy, settings in ((False, module.decode_config), (True, DecodeConfig(strategy="greedy", max_len_b=5))):
        want = [content_ids(row) for row in generate(model, src, settings)[0][:, 0].tolist()]
        assert module.best_hypotheses(src, greedy=greedy) == want
    with pytest.raises(ConfigError, match="decode.n_best=2 needs decode=beam"):
        TranslationModule(model=model.config.to_dict(), optim={}, decode={"strategy": "greedy", "n_best": 2})
