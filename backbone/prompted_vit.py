"""Prompt tuning and prefix tuning on timm's VisionTransformer, used as it is (forward hooks, no copy).

Prompt-based continual learning (L2P, DualPrompt, CODA-Prompt) keeps a
pretrained ViT frozen and learns small inputs to it:

- **prompt tuning** (L2P): ``L`` learned tokens are inserted into the input
  sequence right after the class token, ``[CLS, prompts, patches]``; they get
  the class token's position embedding (what L2P's checkpoint loading gives
  the extra positions);
- **prefix tuning** (DualPrompt, CODA-Prompt): in chosen blocks, ``P`` learned
  keys and ``P`` learned values are added to the keys and values of the
  self-attention (``softmax(q [K_p; K]^T) [V_p; V]``); queries and the sequence
  length are unchanged.

Both are forward hooks on timm's own modules (``pos_drop`` for the tokens;
each block's ``attn`` and ``attn.qkv`` for the prefixes), active only while a
``Prompts`` is being applied, so the same network gives the **query pass**
(the frozen pretrained forward whose class-token feature selects the prompts)
when no prompts are set: one set of weights, as the papers' two copies of the
same pretrained model.  A prefix is added by padding the attention's input with
``P`` extra rows whose key and value outputs are replaced by the prefix and
whose outputs are dropped again: every real query attends to the ``P`` prefix
keys besides the sequence's own, timm's attention code (fused or not) runs
unchanged, at the cost of ``P`` extra query rows per prefixed block.

``PromptedViT`` wraps a ``backbone.vit.TimmViT``: ``query(x)`` is the frozen
pre-logits feature (through a ``FeatureCache`` in evaluation, where the inputs
repeat), ``prompted(x, prompts)`` the feature the head reads (the class token,
or L2P's mean over the prompt tokens, then the backbone's projection and
activation), and ``forward(x)`` both, with the prompts its ``prompter`` picks
from the query.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from backbone.feature_cache import FeatureCache
from utils.errors import UserError

POOLS = ("cls", "prompt")  # the head reads the class token, or the mean of the prompt tokens' outputs (L2P)


@dataclass
class Prompts:
    """What one forward pass adds to the network, and the prompter's own loss term."""
    tokens: Optional[torch.Tensor] = None         # B x L x D, inserted after the class token
    prefixes: dict = field(default_factory=dict)  # block index -> (keys, values), each B x P x A (A: attention width)
    pool: str = "cls"
    loss: Optional[torch.Tensor] = None           # the prompter's surrogate loss (key matching, orthogonality)


class PromptedViT(nn.Module):
    """A frozen timm ViT (``vit.net``) with prompts and prefixes applied by hooks; ``prompter(query)`` gives them."""

    def __init__(self, vit: nn.Module, prompter: nn.Module, feature_cache: bool):
        super().__init__()
        net = getattr(vit, "net", None)
        if net is None or not hasattr(net, "blocks") or not hasattr(net, "pos_drop"):
            raise UserError(f"prompts need a timm VisionTransformer backbone; got {type(vit).__name__}")
        self.vit = vit
        self.prompter = prompter
        self.feature_dim = vit.feature_dim
        for p in net.parameters():
            p.requires_grad_(False)
        self.cache = FeatureCache(net) if feature_cache else None  # not a module: its entries stay out of checkpoints
        self._active: Optional[Prompts] = None
        self._pad = 0  # rows padded onto the current block's attention input
        net.pos_drop.register_forward_hook(self._insert_tokens)
        for index, block in enumerate(net.blocks):
            block.attn.register_forward_pre_hook(lambda m, args, i=index: self._pad_rows(i, args))
            block.attn.qkv.register_forward_hook(lambda m, args, out, i=index: self._set_prefix(i, out))
            block.attn.register_forward_hook(lambda m, args, out, i=index: self._drop_rows(i, out))

    @property
    def net(self) -> nn.Module:
        return self.vit.net

    @property
    def embed_dim(self) -> int:
        return self.net.embed_dim

    @property
    def attention_width(self) -> int:
        attn = self.net.blocks[0].attn
        return attn.num_heads * attn.head_dim

    @property
    def depth(self) -> int:
        return len(self.net.blocks)

    # ------------------------------------------------------------------ hooks (identity unless prompts are set)
    def _insert_tokens(self, module, args, out):
        tokens = None if self._active is None else self._active.tokens
        if tokens is None:
            return out
        net, n = self.net, self.net.num_prefix_tokens
        if net.pos_embed is not None and not net.no_embed_class and net.cls_token is not None:
            tokens = tokens + net.pos_embed[:, :1]  # the class token's position, as L2P's extended embedding
        return torch.cat([out[:, :n], tokens.to(out.dtype), out[:, n:]], dim=1)

    def _prefix(self, index: int):
        return None if self._active is None else self._active.prefixes.get(index)

    def _pad_rows(self, index, args):
        prefix = self._prefix(index)
        if prefix is None:
            return None
        x = args[0]
        self._pad = prefix[0].shape[1]
        return (torch.cat([x, x.new_zeros(x.shape[0], self._pad, x.shape[2])], dim=1), *args[1:])

    def _set_prefix(self, index, out):
        prefix = self._prefix(index)
        if prefix is None:
            return out
        keys, values = (p.to(out.dtype) for p in prefix)
        width = keys.shape[2]
        n = out.shape[1] - self._pad
        padded = torch.cat([out[:, n:, :width], keys, values], dim=2)  # queries of the padding rows: unused
        return torch.cat([out[:, :n], padded], dim=1)

    def _drop_rows(self, index, out):
        if self._prefix(index) is None:
            return out
        return out[:, :out.shape[1] - self._pad]

    # ------------------------------------------------------------------ the passes
    @torch.no_grad()
    def query(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen network's pre-logits feature (no prompts); cached per input outside training."""
        if self.cache is not None and not self.training:
            return self.cache(x)
        return self.net(x)

    def prompted(self, x: torch.Tensor, prompts: Prompts) -> torch.Tensor:
        """The feature the head reads, from a forward pass with ``prompts`` applied."""
        if prompts.pool not in POOLS:
            raise UserError(f"prompt pooling {prompts.pool!r}: expected one of {', '.join(POOLS)}")
        self._active = prompts
        try:
            tokens = self.net.forward_features(x)
        finally:
            self._active, self._pad = None, 0
        if prompts.pool == "prompt":
            n, length = self.net.num_prefix_tokens, prompts.tokens.shape[1]
            feature = self.net.fc_norm(tokens[:, n:n + length].mean(1))
        else:
            feature = self.net.forward_head(tokens, pre_logits=True)
        return self.vit.activation(self.vit.projection(feature))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prompted(x, self.prompter(self.query(x)))
