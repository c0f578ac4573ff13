"""The systems the benchmark compares, behind one small interface.

Each `System` owns a model with the same hyper-parameters and offers what the
benchmark times: the logits of a teacher-forced batch (the training step adds the same
label-smoothed loss, backward and Adam step to all), greedy decoding and beam search,
both forced to a fixed output length so that random weights cannot stop early.

- `attnlab`: this package's `Transformer` with its KV-cached `greedy_search` / `beam_search`.
- `torch`: `torch.nn.Transformer` between the same embeddings, positions and output layer;
  its decoder is the naive loop that re-runs the whole prefix at every step (no cache).
- `attnlab-bf16`: attnlab again, its steps under bf16 autocast while the others run in the
  benchmark's precision: bf16 against fp32 paired in one process (`trainer.precision=bf16-mixed`).
- `marian`: Hugging Face `MarianMTModel` from a `MarianConfig` (random init, nothing
  downloaded; the config attnlab-export writes), decoded with `generate`. Needs the `export` extra.
"""

from __future__ import annotations

import torch
from torch import nn

from ..decoding import beam_search, greedy_search
from ..export.marian import check_marian, marian_config
from ..model import Transformer, TransformerConfig
from ..model.loss import label_smoothed_nll
from ..model.transformer import Embeddings, _token_embedding
from .results import COMPILED


class System:
    """A named model plus its decoders. Subclasses fill in the three methods."""

    name: str
    model: nn.Module
    precision: str | None = None  # its own precision; None: the benchmark's `precision`

    def __init__(self, cfg: TransformerConfig):
        self.cfg = cfg

    def logits(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:  # (B, T, V)
        return self.model(src, tgt_in)

    def loss(self, src, tgt_in, tgt_out, label_smoothing: float):
        """(loss, nll, correct, n_tokens): every system gets attnlab's label-smoothed loss."""
        return label_smoothed_nll(self.logits(src, tgt_in), tgt_out, label_smoothing, self.cfg.pad_id)

    def greedy(self, src: torch.Tensor, length: int) -> torch.Tensor:
        raise NotImplementedError

    def beam(self, src: torch.Tensor, length: int, beam_size: int) -> torch.Tensor | None:
        """None: this system has no beam search to time."""
        return None


class AttnlabSystem(System):
    name = "attnlab"

    compile_decoder = False  # the decoder step under torch.compile (decode.compile)

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg)
        self.model = Transformer(cfg)

    def loss(self, src, tgt_in, tgt_out, label_smoothing):  # the output layer fused with the loss
        return self.model.loss(src, tgt_in, tgt_out, label_smoothing)

    # min_len = length - 1 forbids EOS until the last step, where the length limit forces it.
    def greedy(self, src, length):
        return greedy_search(self.model, src, max_len=length, min_len=length - 1, compile=self.compile_decoder)

    def beam(self, src, length, beam_size):
        limits = dict(max_len=length, min_len=length - 1, compile=self.compile_decoder)
        return beam_search(self.model, src, beam_size=beam_size, **limits)[0]


class Bf16AttnlabSystem(AttnlabSystem):
    """attnlab under bf16 autocast, beside the fp32 systems (perf/workload.py, `autocast`)."""

    name = "attnlab-bf16"
    precision = "bf16"


class CompiledAttnlabSystem(AttnlabSystem):
    """attnlab's model under `torch.compile`: training through the compiled module (bench
    `compile=true`), decoding through the compiled decoder step (`compile_decode=true`, what
    `decode.compile=true` does in attnlab-eval and attnlab-translate)."""

    name = COMPILED

    def __init__(self, cfg: TransformerConfig, train: bool = True, decode: bool = False):
        super().__init__(cfg)
        self.compiled = torch.compile(self.model) if train else self.model
        self.compile_decoder = decode

    loss = System.loss  # through the compiled logits

    def logits(self, src, tgt_in):
        return self.compiled(src, tgt_in)


class TorchTransformer(nn.Module):
    """`torch.nn.Transformer` between attnlab's embeddings and output layer (tied as in cfg)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        src_token = _token_embedding(cfg.src_vocab_size, cfg)
        tgt_token = src_token if cfg.tie_embeddings == "all" else _token_embedding(cfg.tgt_vocab_size, cfg)
        self.src_embed, self.tgt_embed = Embeddings(src_token, cfg), Embeddings(tgt_token, cfg)
        self.transformer = nn.Transformer(
            cfg.d_model,
            cfg.n_heads,
            cfg.encoder_layers,
            cfg.decoder_layers,
            cfg.d_ff,
            cfg.dropout,
            batch_first=True,
            norm_first=cfg.norm == "pre",
        )
        # The benchmark's batches have no padding: converting them to nested tensors is pure overhead.
        self.transformer.encoder.use_nested_tensor = False
        self.generator = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        if cfg.tie_embeddings != "none":
            self.generator.weight = tgt_token.weight

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pad = src == self.config.pad_id  # (B, S), True = padding (torch's convention)
        return self.transformer.encoder(self.src_embed(src), src_key_padding_mask=pad), pad

    def decode(self, tgt_in: torch.Tensor, memory: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.size(1), device=tgt_in.device)
        x = self.transformer.decoder(
            self.tgt_embed(tgt_in), memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=pad
        )
        return self.generator(x)  # (B, T, V)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        return self.decode(tgt_in, *self.encode(src))


class TorchSystem(System):
    name = "torch"

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg)
        self.model = TorchTransformer(cfg)

    @torch.no_grad()
    def greedy(self, src, length):
        """The reference decoder: every step re-runs the decoder over the whole prefix."""
        cfg = self.cfg
        memory, pad = self.model.encode(src)
        tokens = src.new_full((src.size(0), 1), cfg.bos_id)
        for step in range(length):
            logits = self.model.decode(tokens, memory, pad)[:, -1]
            if step < length - 1:  # forced to full length, as for the other systems
                logits[:, cfg.eos_id] = float("-inf")
            tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
        return tokens[:, 1:]


class MarianSystem(System):
    name = "marian"

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg)
        try:
            from transformers import MarianMTModel
        except ImportError as err:
            raise ImportError("the marian peer needs transformers: pip install 'attnlab[export]'") from err
        check_marian(cfg)  # the switches Marian lacks, by name (a ConfigError)
        config = marian_config(cfg)  # attnlab-export's mapping, so the peer is the exported model's shape
        config.forced_eos_token_id = None  # the benchmark forces full-length outputs
        self.model = MarianMTModel(config)

    def logits(self, src, tgt_in):
        return self.model(input_ids=src, attention_mask=src != self.cfg.pad_id, decoder_input_ids=tgt_in).logits

    def _generate(self, src, length, beams):
        out = self.model.generate(
            input_ids=src,
            attention_mask=src != self.cfg.pad_id,
            num_beams=beams,
            do_sample=False,
            max_new_tokens=length,
            min_new_tokens=length,
            length_penalty=1.0,
            early_stopping=False,
        )
        return out[:, 1:]  # drop the decoder start token

    def greedy(self, src, length):
        return self._generate(src, length, 1)

    def beam(self, src, length, beam_size):
        return self._generate(src, length, beam_size)


SYSTEMS: dict[str, type[System]] = {
    "attnlab": AttnlabSystem, "attnlab-bf16": Bf16AttnlabSystem, "torch": TorchSystem, "marian": MarianSystem,
}  # fmt: skip
