"""A trained attnlab model as a Hugging Face `MarianMTModel` folder (`export_marian`).

Marian is the post-norm transformer of the paper with sinusoidal positions, ReLU, biases on every
projection, embeddings scaled by sqrt(d_model) and no embedding LayerNorm: the architecture attnlab
trains by default. A configuration that leaves it is refused (`check_marian`) rather than exported
into a model that would load and quietly compute something else.

One layout differs and is undone here: attnlab's position table interleaves sines and cosines
(sin, cos, sin, cos, ...), Marian's puts every sine first and every cosine after. A table stored in
the weights file would be read by `from_pretrained`, but `save_pretrained` never writes one
(`_keys_to_ignore_on_save`): a model loaded and saved again, by a user or a fine-tuning script,
would come back with Marian's own table. So instead of carrying attnlab's table, the export
reorders the model's d_model features (`marian_feature_order`) so that Marian's own table is
attnlab's, feature for feature. Every matrix that reads the residual stream has its columns
reordered, every matrix that writes it its rows, and LayerNorm, which normalises over the features,
is unchanged by a reordering (its gain and bias are reordered with them): the exported model
computes attnlab's function with whichever table Transformers or CTranslate2 build.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import TrainedModel
from ..decoding.config import DecodeConfig
from ..errors import ConfigError
from ..model import Transformer, TransformerConfig
from .vocab import check_tokenizers, write_tokenizer_files

MARKER = "attnlab_export.json"  # what the export came from, and the decoding that did not map


def require_transformers():
    """The `transformers` module, or a ConfigError saying which extra installs it."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("exporting to Marian needs transformers: pip install 'attnlab[export]'") from None
    return transformers


def check_out_dir(out: Path, overwrite: bool, key: str = "out") -> None:
    """A folder to write into: new or empty, or with `overwrite` an earlier export (it holds MARKER).
    convert_ctranslate2 deletes the folder first, as CTranslate2's converter does, so `overwrite`
    never applies to a folder an export did not write."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{key}={out} is a file; give a folder to write the model into")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{key}={out} is a folder that is not empty; choose a new one, or overwrite=true")
        if not (out / MARKER).is_file():
            raise ConfigError(
                f"{key}={out} is not empty and holds no {MARKER}: overwrite=true replaces an earlier export only"
            )


# Every TransformerConfig field, decided: the switches check_marian refuses values of, and the
# fields marian_config carries over (tests/test_export.py holds a new field to one of the two).
CHECKED = ("positional", "norm", "residual", "d_head")
CARRIED = ("src_vocab_size", "tgt_vocab_size", "d_model", "d_ff", "n_heads", "encoder_layers", "decoder_layers",
           "dropout", "attention_dropout", "tie_embeddings", "max_len", "pad_id", "bos_id", "eos_id")  # fmt: skip


def check_marian(cfg: TransformerConfig) -> None:
    """Raise a ConfigError naming every `model.*` switch whose value Marian cannot express. Every
    tie_embeddings value maps (Marian shares or separates its three embedding matrices the same ways)."""
    refusals = []
    if cfg.positional != "sinusoidal":
        refusals.append(f"model.positional={cfg.positional} cannot be exported to Marian (it has sinusoidal "
                        "positions only)")  # fmt: skip
    if cfg.norm != "post":
        refusals.append("model.norm=pre cannot be exported to Marian (it is post-norm: LayerNorm after each "
                        "sublayer, no final LayerNorm)")  # fmt: skip
    if not cfg.residual:
        refusals.append("model.residual=false cannot be exported to Marian (its layers always add the residual)")
    if cfg.d_k != cfg.d_v:
        refusals.append(f"model.d_head={cfg.d_head} cannot be exported to Marian (its query/key width per head is "
                        f"d_model / n_heads = {cfg.d_v})")  # fmt: skip
    if refusals:
        raise ConfigError("; ".join(refusals))


def marian_feature_order(d_model: int) -> torch.Tensor:
    """Marian's feature m is attnlab's feature order[m]: the even (sine) features, then the odd
    (cosine) ones, which turns attnlab's interleaved position table into Marian's halves."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def marian_config(cfg: TransformerConfig):
    """The `MarianConfig` of a model with attnlab config `cfg` (check_marian first)."""
    transformers = require_transformers()
    return transformers.MarianConfig(
        vocab_size=cfg.src_vocab_size,
        decoder_vocab_size=cfg.tgt_vocab_size,
        share_encoder_decoder_embeddings=cfg.tie_embeddings == "all",
        tie_word_embeddings=cfg.tie_embeddings != "none",
        d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_ffn_dim=cfg.d_ff,
        decoder_ffn_dim=cfg.d_ff,
        encoder_attention_heads=cfg.n_heads,
        decoder_attention_heads=cfg.n_heads,
        max_position_embeddings=cfg.max_len,
        activation_function="relu",
        scale_embedding=True,  # attnlab's Embeddings multiply by sqrt(d_model) (paper 3.4)
        dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout,
        activation_dropout=0.0,  # attnlab has no dropout inside the feed-forward
        pad_token_id=cfg.pad_id,
        bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id,
        forced_eos_token_id=cfg.eos_id,
        # attnlab's decoder starts from BOS; Marian's own models start from <pad> (a zero embedding).
        decoder_start_token_id=cfg.bos_id,
    )


def marian_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """attnlab's weights under MarianMTModel's names, with the d_model features in Marian's order."""
    cfg = model.config
    order = marian_feature_order(cfg.d_model)
    out: dict[str, torch.Tensor] = {}

    def put(name: str, tensor: torch.Tensor) -> None:
        out[name] = tensor.detach().float().contiguous().clone()

    def norm(name: str, ln: torch.nn.LayerNorm) -> None:
        put(f"{name}.weight", ln.weight[order])
        put(f"{name}.bias", ln.bias[order])

    def attention(name: str, mha) -> None:
        rows = torch.arange(mha.in_proj.weight.size(0)).split(mha.widths)  # W_Q, W_K, W_V
        for proj, r in zip(("q_proj", "k_proj", "v_proj"), rows):
            put(f"{name}.{proj}.weight", mha.in_proj.weight[r][:, order])  # reads the residual stream
            put(f"{name}.{proj}.bias", mha.in_proj.bias[r])
        put(f"{name}.out_proj.weight", mha.out_proj.weight[order])  # writes it
        put(f"{name}.out_proj.bias", mha.out_proj.bias[order])

    def feed_forward(name: str, ff) -> None:
        put(f"{name}.fc1.weight", ff.w_1.weight[:, order])
        put(f"{name}.fc1.bias", ff.w_1.bias)
        put(f"{name}.fc2.weight", ff.w_2.weight[order])
        put(f"{name}.fc2.bias", ff.w_2.bias[order])

    for i, layer in enumerate(model.encoder.layers):
        name = f"model.encoder.layers.{i}"
        attention(f"{name}.self_attn", layer.self_attn)
        norm(f"{name}.self_attn_layer_norm", layer.sublayer[0].norm)
        feed_forward(name, layer.feed_forward)
        norm(f"{name}.final_layer_norm", layer.sublayer[1].norm)
    for i, layer in enumerate(model.decoder.layers):
        name = f"model.decoder.layers.{i}"
        attention(f"{name}.self_attn", layer.self_attn)
        norm(f"{name}.self_attn_layer_norm", layer.sublayer[0].norm)
        attention(f"{name}.encoder_attn", layer.src_attn)
        norm(f"{name}.encoder_attn_layer_norm", layer.sublayer[1].norm)
        feed_forward(name, layer.feed_forward)
        norm(f"{name}.final_layer_norm", layer.sublayer[2].norm)

    src, tgt = model.src_embed.token.weight, model.tgt_embed.token.weight
    if cfg.tie_embeddings == "all":
        put("model.shared.weight", src[:, order])
    put("model.encoder.embed_tokens.weight", src[:, order])
    put("model.decoder.embed_tokens.weight", tgt[:, order])
    put("lm_head.weight", model.generator.weight[:, order])
    put("final_logits_bias", torch.zeros(1, cfg.tgt_vocab_size))  # attnlab's output layer has no bias
    for side, embed in (("encoder", model.src_embed), ("decoder", model.tgt_embed)):
        put(f"model.{side}.embed_positions.weight", embed.position.pe[:, order])  # Marian's layout, attnlab's values
    return out


def generation_config(cfg: TransformerConfig, decode: DecodeConfig):
    """The run's decoding as far as `generate` can express it (docs/export.md says what differs)."""
    transformers = require_transformers()
    beam = decode.strategy == "beam"
    return transformers.GenerationConfig(
        decoder_start_token_id=cfg.bos_id,
        bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id,
        pad_token_id=cfg.pad_id,
        forced_eos_token_id=cfg.eos_id,  # at the length limit, as attnlab ends a hypothesis
        bad_words_ids=[[cfg.pad_id], [cfg.bos_id]],  # never outputs in attnlab (decoding/greedy.py)
        # Output tokens, EOS included, plus the start token; attnlab's a * src_len + b has no equivalent.
        max_length=cfg.max_len + 1,
        min_length=decode.min_len + 1,  # counts the start token too: no EOS before min_len outputs
        num_beams=decode.beam_size if beam else 1,
        # HF divides by len^alpha, attnlab by GNMT's ((5 + len) / 6)^alpha: the same alpha, another curve.
        length_penalty=decode.length_penalty if beam else 1.0,
        early_stopping=True if beam else False,  # stop once beam_size hypotheses ended (attnlab, fairseq)
        do_sample=False,
    )


def run_decoding(trained: TrainedModel) -> DecodeConfig:
    """The decoding the checkpoint's run recorded, DecodeConfig's defaults for what it did not."""
    return DecodeConfig.for_checkpoint({}, trained.hparams.get("decode") or {}, ())


def export_marian(
    trained: TrainedModel, out_dir: str | Path, decode: DecodeConfig | None = None, overwrite: bool = False
) -> Path:
    """Write `trained` as a MarianMTModel folder: config.json, model.safetensors, generation_config.json,
    the tokenizer files MarianTokenizer reads, and attnlab_export.json. `decode`: the decoding for
    generation_config.json (default: the run's). `out_dir` must be new or empty unless `overwrite`.
    Returns the folder."""
    cfg = trained.model.config
    check_marian(cfg)
    check_tokenizers(trained.src_tokenizer, trained.tgt_tokenizer, cfg)
    transformers = require_transformers()
    decode = decode or run_decoding(trained)
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    marian = transformers.MarianMTModel(marian_config(cfg))
    marian.load_state_dict(marian_state_dict(trained.model), strict=True)
    marian.generation_config = generation_config(cfg, decode)
    marian.save_pretrained(out)  # safetensors; embed_positions left out, Marian rebuilds the same table
    write_tokenizer_files(trained.src_tokenizer, trained.tgt_tokenizer, cfg, out)
    record = {
        "checkpoint": str(trained.path),
        "global_step": trained.global_step,
        "averaged_from": [str(p) for p in trained.averaged_from],
        "model": cfg.to_dict(),
        "decode": decode.to_dict(),
        "length_penalty": "attnlab: GNMT ((5 + len) / 6)^alpha; generation_config.json: len^alpha, same alpha",
        "max_len": "attnlab: a * source tokens (with EOS) + b outputs (with EOS); generate(max_length=that + 1)",
    }
    (out / MARKER).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return out
