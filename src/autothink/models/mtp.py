"""Multi-token prediction (MTP) heads in the DeepSeek-V3 form, for any supported HF causal LM.

Head k (k = 1..D) at position i combines the previous depth's hidden state with the embedding of
the token k places ahead, runs one transformer block, and predicts the token k+1 places ahead:

    h'_i^k = W_k · [RMSNorm(Emb(t_{i+k})); RMSNorm(h_i^{k-1})]      # h^0 = the base model's last
    h_i^k  = Block_k(h'^k)_i                                       # decoder layer output (pre-norm)
    logits_i^k = OutHead(FinalNorm(h_i^k))    predicts t_{i+k+1}

Emb, FinalNorm and OutHead are the base model's own modules (shared, not copied); Block_k is the
base model's decoder-layer class built from the base config, so the heads work for every
architecture whose layers live in `model.model.layers` (Llama, Qwen2, Qwen3, Gemma3, ...). The
heads keep the sequence length T: positions without a future token (i + k + 1 >= T) get logits
that the loss never scores.

The heads are saved beside the base checkpoint as `mtp_heads.safetensors` + `mtp_config.json`;
`AutoModelForCausalLM.from_pretrained(dir)` ignores those files and loads the base alone.
"""
from __future__ import annotations

import inspect
import json
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from autothink.algorithms.uld import mtp_distill_loss

HEADS_FILE = "mtp_heads.safetensors"
CONFIG_FILE = "mtp_config.json"
FORMAT = "autothink-mtp/1"


@dataclass
class MTPConfig:
    """How many heads, their loss weight and how their blocks start.

    Attributes:
        num_heads: D, the number of heads (head k predicts the token k+1 ahead).
        loss_weight: λ in (λ/D)·Σ_k CE_k.
        block_layer_idx: the base layer whose type (full/sliding attention) the blocks take and,
            with `init="copy"`, whose weights they start from. None = the last full-attention
            layer (the last layer when the config has no layer types).
        init: "copy" (blocks start as a copy of that layer, a warm start) or "random".
        draft_vocab: 0, or how many token ids the heads draft among in speculative decoding (the
            ids are `MTPHeads.draft_ids`, set by `set_draft_vocab`); training always scores the
            whole vocabulary.
    """

    num_heads: int = 1
    loss_weight: float = 0.3
    block_layer_idx: int | None = None
    init: str = "copy"
    draft_vocab: int = 0


def _backbone(base: nn.Module) -> nn.Module:
    backbone = getattr(base, "model", None)
    if backbone is None or not isinstance(getattr(backbone, "layers", None), nn.ModuleList):
        raise ValueError(
            f"MTP heads need a causal LM whose decoder layers are `model.model.layers` "
            f"(Llama, Qwen2, Qwen3, Gemma3 style); got {type(base).__name__}"
        )
    for name in ("norm", "rotary_emb"):
        if not hasattr(backbone, name):
            raise ValueError(f"MTP heads: {type(base).__name__}.model has no `{name}` module")
    return backbone


def _softcap(base: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """Gemma's final-logit soft-capping, as in its CausalLM head (models without it: unchanged)."""
    cap = getattr(base.config, "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def _layer_types(config) -> list[str]:
    return list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)


class MTPHead(nn.Module):
    """One depth: two RMSNorms, the projection W_k: [2H] -> [H], one decoder block."""

    def __init__(self, norm_cls, layer_cls, config, layer_idx: int):
        super().__init__()
        h = config.hidden_size
        self.norm_emb = norm_cls(h, eps=config.rms_norm_eps)
        self.norm_hidden = norm_cls(h, eps=config.rms_norm_eps)
        self.proj = nn.Linear(2 * h, h, bias=False)
        nn.init.normal_(self.proj.weight, std=getattr(config, "initializer_range", 0.02))
        self.block = layer_cls(config, layer_idx)


class MTPHeads(nn.Module):
    """D MTP heads for one base model. Holds only the heads' own parameters.

    Args:
        base: the causal LM (e.g. `LlamaForCausalLM`); used here for its classes, config,
            device and dtype, and passed again to `forward` for the shared modules.
        config: `MTPConfig`.

    Raises:
        ValueError: the architecture has no `model.model.layers`, or a bad config value.
    """

    def __init__(self, base: nn.Module, config: MTPConfig | None = None):
        super().__init__()
        config = config or MTPConfig()
        if config.num_heads < 1:
            raise ValueError(f"num_heads must be >= 1; got {config.num_heads}")
        if config.init not in ("copy", "random"):
            raise ValueError(f"init must be 'copy' or 'random'; got {config.init!r}")
        backbone = _backbone(base)
        cfg = base.config
        types = _layer_types(cfg)
        idx = config.block_layer_idx
        if idx is None:
            full = [i for i, t in enumerate(types) if t == "full_attention"]
            idx = full[-1] if full else cfg.num_hidden_layers - 1
        if not 0 <= idx < cfg.num_hidden_layers:
            raise ValueError(f"block_layer_idx {idx} is not a layer of a {cfg.num_hidden_layers}-layer model")
        self.config = MTPConfig(**{**asdict(config), "block_layer_idx": idx})
        self.layer_type = types[idx]
        layer_cls, norm_cls = type(backbone.layers[0]), type(backbone.norm)
        self.heads = nn.ModuleList(MTPHead(norm_cls, layer_cls, cfg, idx) for _ in range(config.num_heads))
        ids = torch.zeros(config.draft_vocab, dtype=torch.long) if config.draft_vocab else None
        self.register_buffer("draft_ids", ids)  # None: draft over the whole vocabulary
        self._draft_head = None  # (key, weight rows, bias rows) of draft_ids, cut once
        param = next(base.parameters())
        self.to(device=param.device, dtype=param.dtype)
        if config.init == "copy":
            for head in self.heads:
                head.block.load_state_dict(backbone.layers[idx].state_dict())

    def forward(
        self,
        base: nn.Module,
        input_ids: torch.Tensor,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Run the D heads after the main model.

        Args:
            base: the base causal LM (its embedding, final norm, rotary embedding, output head).
            input_ids: `[B, T]` the tokens the main model read.
            hidden: `[B, T, H]` the main model's last decoder-layer output, before its final norm.
            attention_mask: `[B, T]` padding mask as given to the main model (1 = token).
            position_ids: `[B, T]` or None (then 0..T-1).

        Returns:
            D tensors `[B, T, V]`; entry k-1 is head k, whose position i predicts token i+k+1.
        """
        b, t = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=input_ids.device)[None].expand(b, t)
        mask, rope = self._mask_and_rope(base, hidden, attention_mask, position_ids, None)
        out = []
        for k in range(1, len(self.heads) + 1):
            # t_{i+k}; the last k positions have no such token (filled with id 0, never scored)
            ahead = torch.cat([input_ids[:, k:], input_ids.new_zeros(b, min(k, t))], dim=1)[:, :t]  # (B, T)
            hidden = self._block(k, base, ahead, hidden, mask, position_ids, rope, None)
            out.append(self.logits(base, hidden))  # (B, T, V)
        return out

    def step(
        self, k: int, base: nn.Module, ahead: torch.Tensor, hidden: torch.Tensor, attention_mask: torch.Tensor,
        position_ids: torch.Tensor, cache,
    ) -> torch.Tensor:
        """Head k (1-based) over new positions, with its own KV cache (incremental decoding).

        Args:
            ahead: `[B, n]` the token k places ahead of each new position.
            hidden: `[B, n, H]` the previous depth's output at the new positions (depth 0: the main model's).
            attention_mask: `[B, cached + n]` (1 = token) over the cached and the new positions.
            position_ids: `[B, n]` of the new positions.
            cache: a `transformers.DynamicCache` holding head k's cached positions; the new ones are appended.

        Returns:
            `[B, n, H]` head k's output (pre-norm) at the new positions; `logits` maps it to the vocabulary.
        """
        mask, rope = self._mask_and_rope(base, hidden, attention_mask, position_ids, cache)
        return self._block(k, base, ahead, hidden, mask, position_ids, rope, cache)

    def logits(self, base: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """The base model's final norm and output head over a head's output (Gemma's soft-capping included)."""
        return _softcap(base, base.get_output_embeddings()(_backbone(base).norm(hidden)))

    def set_draft_vocab(self, ids: torch.Tensor | None) -> None:
        """Draft among these token ids only (None: the whole vocabulary). On a CPU the output head
        over a 49k-256k vocabulary is most of a draft's cost; the model's own replies use a few
        thousand tokens. Any draft set keeps speculative decoding exact."""
        device = next(self.parameters()).device
        self.draft_ids = None if ids is None else torch.as_tensor(ids, dtype=torch.long).to(device)
        self.config.draft_vocab = 0 if ids is None else len(self.draft_ids)
        self._draft_head = None

    def draft_logits(self, base: nn.Module, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(logits, ids)`: a head's logits over the draft vocabulary and its token ids (None = all)."""
        if self.draft_ids is None:
            return self.logits(base, hidden), None
        head = base.get_output_embeddings()
        key = (head.weight.data_ptr(), head.weight._version, self.draft_ids.data_ptr())
        if self._draft_head is None or self._draft_head[0] != key:
            bias = None if getattr(head, "bias", None) is None else head.bias[self.draft_ids]
            self._draft_head = (key, head.weight[self.draft_ids].detach(), bias)
        _, weight, bias = self._draft_head
        return _softcap(base, torch.nn.functional.linear(_backbone(base).norm(hidden), weight, bias)), self.draft_ids

    def _mask_and_rope(self, base, hidden, attention_mask, position_ids, cache):
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        make_mask = create_sliding_window_causal_mask if self.layer_type == "sliding_attention" else create_causal_mask
        # the heads' caches hold only their block's layer: size the mask against it
        extra = {"layer_idx": self.config.block_layer_idx} if cache is not None else {}
        mask = make_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask,
                         past_key_values=cache, position_ids=position_ids, **extra)
        rotary = _backbone(base).rotary_emb
        if "layer_type" in inspect.signature(rotary.forward).parameters:
            return mask, rotary(hidden, position_ids, self.layer_type)
        return mask, rotary(hidden, position_ids)

    def _block(self, k, base, ahead, hidden, mask, position_ids, rope, cache) -> torch.Tensor:
        head = self.heads[k - 1]
        x = head.proj(torch.cat([head.norm_emb(base.get_input_embeddings()(ahead)), head.norm_hidden(hidden)], dim=-1))
        out = head.block(x, attention_mask=mask, position_ids=position_ids, position_embeddings=rope,
                         past_key_values=cache, use_cache=cache is not None)
        return out[0] if isinstance(out, tuple) else out  # older decoder layers return (hidden, ...)


@contextmanager
def last_layer_output(base: nn.Module):
    """Collect the last decoder layer's output (the hidden state before the final norm) of each
    forward of `base` run inside the block: `with last_layer_output(model) as hidden: model(...)`."""
    captured: list[torch.Tensor] = []
    last = _backbone(base).layers[base.config.num_hidden_layers - 1]
    hook = last.register_forward_hook(
        lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output))
    try:
        yield captured
    finally:
        hook.remove()


@dataclass
class MTPOutput:
    """`logits`: `[B, T, V]` of the main head; `mtp_logits`: D × `[B, T, V]` (empty when the heads
    are disabled); losses are None without labels; `loss = lm_loss + mtp_loss`."""

    logits: torch.Tensor
    mtp_logits: list[torch.Tensor] = field(default_factory=list)
    loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    mtp_loss: torch.Tensor | None = None


class MTPModel(nn.Module):
    """A base causal LM plus MTP heads; `enabled = False` makes it exactly the base model.

    >>> # model = MTPModel(base, MTPConfig(num_heads=2)); out = model(input_ids, labels=input_ids)
    >>> # out.loss.backward(); model.save_pretrained(dir)  # base files + mtp_heads.safetensors
    """

    def __init__(self, base: nn.Module, config: MTPConfig | None = None, heads: MTPHeads | None = None):
        super().__init__()
        self.base = base
        self.heads = heads if heads is not None else MTPHeads(base, config)
        self.enabled = True

    @property
    def mtp_config(self) -> MTPConfig:
        return self.heads.config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> MTPOutput:
        """Args: as the base model's forward (`[B, T]` tensors); `labels` in HF convention."""
        if not self.enabled:
            out = self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            labels=labels, **kwargs)
            return MTPOutput(logits=out.logits, loss=out.loss, lm_loss=out.loss)
        kwargs.setdefault("use_cache", False)
        with last_layer_output(self.base) as captured:
            out = self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            labels=labels, **kwargs)
        hidden = captured[-1]  # (B, T, H)
        mtp_logits = self.heads(self.base, input_ids, hidden, attention_mask, position_ids)
        if labels is None:
            return MTPOutput(logits=out.logits, mtp_logits=mtp_logits)
        ces = mtp_distill_loss(out.logits, mtp_logits, labels, w_uld=0.0)  # mtp_ce: the mean of CE_1..CE_D
        extra = self.mtp_config.loss_weight * ces.mtp_ce  # (λ/D)·Σ_k CE_k
        return MTPOutput(out.logits, mtp_logits, loss=out.loss + extra, lm_loss=out.loss, mtp_loss=extra)

    def save_pretrained(self, directory: str | Path, tokenizer=None) -> Path:
        """Save the base checkpoint (loadable alone) and the heads beside it."""
        directory = Path(directory)
        self.base.save_pretrained(directory)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        save_mtp(self.heads, directory)
        return directory


def save_mtp(heads: MTPHeads | MTPModel, directory: str | Path) -> Path:
    """Write `mtp_heads.safetensors` and `mtp_config.json` into `directory`; return the weights path."""
    from safetensors.torch import save_file

    if isinstance(heads, MTPModel):
        heads = heads.heads
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in heads.state_dict().items()}
    save_file(state, str(directory / HEADS_FILE), metadata={"format": FORMAT})
    meta = {"format": FORMAT, **asdict(heads.config), "layer_type": heads.layer_type}
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return directory / HEADS_FILE


def has_mtp(directory: str | Path) -> bool:
    return (Path(directory) / CONFIG_FILE).exists() and (Path(directory) / HEADS_FILE).exists()


def load_mtp(directory: str | Path, base: nn.Module) -> MTPModel:
    """Put saved heads back on `base` (e.g. `AutoModelForCausalLM.from_pretrained(directory)`).

    Raises:
        ValueError: no heads in `directory`, an unknown format, or heads that do not fit `base`.
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    if not has_mtp(directory):
        raise ValueError(f"{directory} has no MTP heads ({CONFIG_FILE} and {HEADS_FILE})")
    meta = json.loads((directory / CONFIG_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{directory / CONFIG_FILE}: unknown format {meta.get('format')!r}; expected {FORMAT!r}")
    fields = {k: meta[k] for k in ("num_heads", "loss_weight", "block_layer_idx")}
    fields["draft_vocab"] = meta.get("draft_vocab", 0)
    heads = MTPHeads(base, MTPConfig(**fields, init="random"))
    state = load_file(str(directory / HEADS_FILE))
    try:
        heads.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"MTP heads in {directory} do not fit {type(base).__name__}: {err}") from err
    return MTPModel(base, heads=heads)
