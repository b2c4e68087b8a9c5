"""The Transformer: Vaswani et al. (2017), "Attention Is All You Need".

Scaled dot-product attention (section 3.2.1, eq. 1): ``softmax(Q K^T / sqrt(d_k)) V``, with ``h``
heads (section 3.2.2). Training calls :func:`torch.nn.functional.scaled_dot_product_attention`
(fused kernels, no weights materialised); when the weights are asked for (plots, alignments) the
same computation is written out so they can be returned. ``scale_scores=False`` drops the
``1/sqrt(d_k)`` factor, an ablation showing why it is there: without it, dot products grow with
``d_k`` and the softmax saturates.

Pre-norm residual blocks by default (``x + Sublayer(LN(x))``, as in most current practice);
``norm_first=False`` gives the paper's post-norm ``LN(x + Sublayer(x))``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnmt import ops
from attnmt.errors import ConfigError
from attnmt.models.base import Seq2Seq, State, sinusoid_positions
from attnmt.utils.schema import Fraction, PositiveInt


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float, scale_scores: bool = True):
        super().__init__()
        self.num_heads, self.d_k = num_heads, d_model // num_heads
        self.scale = 1.0 / math.sqrt(self.d_k) if scale_scores else 1.0
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.d_k).transpose(1, 2)  # (B, H, T, d_k)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.split_heads(self.k_proj(x)), self.split_heads(self.v_proj(x))

    def forward(
        self, query: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """``query`` ``(B, T, D)``; ``k``, ``v`` already projected ``(B, H, S, d_k)``;
        ``mask`` broadcastable to ``(B, H, T, S)``, True where attending is allowed, or None
        (every key visible). CUDA's attention kernels need the mask's last dimension in memory:
        ``(B, 1, 1, S)`` or ``(T, S)``, never a size-1 last dimension broadcast over ``S``.
        Returns ``(B, T, D)`` and, if asked, the weights ``(B, H, T, S)``."""
        q = self.split_heads(self.q_proj(query))  # (B, H, T, d_k)
        p = self.dropout if self.training else 0.0
        # Eq. 1 written out when the weights are asked for (plots, alignments), and for dropout on
        # CPU with the fast kernels on: SDPA falls back to these same steps there, with a slower mask.
        if need_weights or (p > 0.0 and q.device.type == "cpu" and ops.enabled()):
            scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, S)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            weights = torch.softmax(scores, dim=-1)  # (B, H, T, S)
            out = ops.dropout(weights, p) @ v  # (B, H, T, d_k)
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, scale=self.scale)
        B, H, T, dk = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, T, H * dk)), weights


class FeedForward(nn.Module):
    """Section 3.3: ``FFN(x) = max(0, x W_1 + b_1) W_2 + b_2``."""

    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.w_1, self.w_2, self.dropout = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model), ops.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(F.relu(self.w_1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout, norm_first, scale_scores):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout, scale_scores)
        self.ln_1, self.ln_2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, d_ff, dropout)
        self.dropout = ops.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        def attn(h):
            return self.self_attn(h, *self.self_attn.project_kv(h), mask, need_weights)

        if self.norm_first:
            a, w = attn(self.ln_1(x))
            x = x + self.dropout(a)
            x = x + self.dropout(self.mlp(self.ln_2(x)))
        else:
            a, w = attn(x)
            x = self.ln_1(x + self.dropout(a))
            x = self.ln_2(x + self.dropout(self.mlp(x)))
        return x, w


class DecoderLayer(nn.Module):
    def __init__(self, d_model, num_heads, d_ff, dropout, norm_first, scale_scores):
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(d_model, num_heads, dropout, scale_scores)
        self.cross_attn = MultiHeadAttention(d_model, num_heads, dropout, scale_scores)
        self.ln_1, self.ln_2, self.ln_3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, d_ff, dropout)
        self.dropout = ops.Dropout(dropout)

    def forward(
        self, x: Tensor, self_mask: Tensor | None, cross_kv: tuple[Tensor, Tensor], cross_mask: Tensor,
        past_kv: tuple[Tensor, Tensor] | None = None, need_weights: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor | None, Tensor | None]:
        """``x`` ``(B, T, D)``; ``past_kv`` the cached self-attention keys/values of earlier steps
        ``(B, H, t, d_k)``, or None. Returns the output, the keys/values including ``x``'s
        positions (the cache for the next step), and the self- and cross-attention weights."""
        norm = self.norm_first
        h = self.ln_1(x) if norm else x
        k, v = self.self_attn.project_kv(h)  # (B, H, T, d_k)
        if past_kv is not None:
            k, v = torch.cat([past_kv[0], k], dim=2), torch.cat([past_kv[1], v], dim=2)  # (B, H, t+T, d_k)
        a, w_self = self.self_attn(h, k, v, self_mask, need_weights)
        x = x + self.dropout(a) if norm else self.ln_1(x + self.dropout(a))
        h = self.ln_2(x) if norm else x
        a, w_cross = self.cross_attn(h, *cross_kv, cross_mask, need_weights)
        x = x + self.dropout(a) if norm else self.ln_2(x + self.dropout(a))
        x = x + self.dropout(self.mlp(self.ln_3(x))) if norm else self.ln_3(x + self.dropout(self.mlp(x)))
        return x, (k, v), w_self, w_cross


class Transformer(Seq2Seq):
    has_full_context = True

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        d_model: PositiveInt = 128,
        num_heads: PositiveInt = 4,
        d_ff: PositiveInt = 512,
        encoder_layers: PositiveInt = 3,
        decoder_layers: PositiveInt = 3,
        dropout: Fraction = 0.1,
        norm_first: bool = True,
        scale_scores: bool = True,
        tie_embeddings: bool = True,
        joint_vocab: bool = False,
        max_positions: PositiveInt = 1024,
    ):
        super().__init__()
        if d_model % num_heads:
            raise ConfigError(
                f"model.d_model={d_model} is not divisible by model.num_heads={num_heads}: "
                f"choose num_heads among {[h for h in range(1, d_model + 1) if d_model % h == 0][:12]}"
            )
        if tie_embeddings and not joint_vocab:
            raise ConfigError(
                "model.tie_embeddings=true needs a joint source/target vocabulary: set "
                "data.joint_vocab=true or model.tie_embeddings=false"
            )
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} must be in [0, 1)")
        self.src_vocab_size, self.tgt_vocab_size = src_vocab_size, tgt_vocab_size
        self.d_model, self.norm_first = d_model, norm_first
        self.src_embed = nn.Embedding(src_vocab_size, d_model, padding_idx=0)
        self.tgt_embed = self.src_embed if tie_embeddings else nn.Embedding(tgt_vocab_size, d_model, padding_idx=0)
        nn.init.normal_(self.src_embed.weight, std=d_model**-0.5)
        nn.init.normal_(self.tgt_embed.weight, std=d_model**-0.5)
        self.register_buffer("positions", sinusoid_positions(max_positions, d_model), persistent=False)
        args = (d_model, num_heads, d_ff, dropout, norm_first, scale_scores)
        self.encoder = nn.ModuleList(EncoderLayer(*args) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(*args) for _ in range(decoder_layers))
        self.ln_enc = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.ln_dec = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.generator = nn.Linear(d_model, tgt_vocab_size, bias=False)
        if tie_embeddings:
            self.generator.weight = self.tgt_embed.weight  # section 3.4
        self.dropout = ops.Dropout(dropout)

    def embed(self, embedding: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        """Section 3.4: embeddings scaled by ``sqrt(d_model)`` plus sinusoidal positions."""
        T = tokens.size(1)
        return self.dropout(embedding(tokens) * math.sqrt(self.d_model) + self.positions[offset : offset + T])

    def encode(self, src: Tensor, src_mask: Tensor, need_attention: bool = False) -> State:
        x = self.embed(self.src_embed, src)  # (B, S, D)
        mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        weights = []
        for layer in self.encoder:
            x, w = layer(x, mask, need_attention)
            weights.append(w)
        enc = {"memory": self.ln_enc(x), "src_mask": src_mask}
        if need_attention:
            enc["encoder_self"] = torch.stack(weights, dim=1)  # (B, L, H, S, S)
        return enc

    def cross_kv(self, enc: State) -> list[tuple[Tensor, Tensor]]:
        return [layer.cross_attn.project_kv(enc["memory"]) for layer in self.decoder]

    def decode(self, enc: State, tgt_in: Tensor, need_attention: bool = False, full_context: bool = False):
        """Teacher-forced decoding. ``full_context=True`` (Garg et al. 2019, section 4.3) lifts the
        future mask: every position reads the whole target (its padding excepted). That pass
        serves alignment only (guided training, evaluation); its logits are not a translation."""
        T = tgt_in.size(1)
        x = self.embed(self.tgt_embed, tgt_in)  # (B, T, D)
        if full_context:
            self_mask = (tgt_in != 0)[:, None, None, :]  # (B, 1, 1, T): all but padding (id 0)
        else:
            self_mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()  # (T, T)
        cross_mask = enc["src_mask"][:, None, None, :]  # (B, 1, 1, S)
        w_self, w_cross = [], []
        for layer, kv in zip(self.decoder, self.cross_kv(enc)):
            x, _, ws, wc = layer(x, self_mask, kv, cross_mask, need_weights=need_attention)
            w_self.append(ws)
            w_cross.append(wc)
        logits = self.generator(self.ln_dec(x))  # (B, T, V)
        if not need_attention:
            return logits, {}
        return logits, {
            "cross": torch.stack(w_cross, dim=1),  # (B, L, H, T, S)
            "decoder_self": torch.stack(w_self, dim=1),  # (B, L, H, T, T)
        }

    # -- incremental decoding with a key/value cache ----------------------------------------------
    def init_state(self, enc: State) -> State:
        """Per decoder layer ``i``: cross-attention keys/values ``cross_k.i``/``cross_v.i``, projected
        once, and self-attention keys/values ``self_k.i``/``self_v.i``, which grow by one position per
        step. All ``(B, H, len, d_k)``, batch first. One entry per layer, so a step appends to each
        layer's cache without copying the others."""
        B = enc["memory"].size(0)
        state = {}
        for i, (layer, (k, v)) in enumerate(zip(self.decoder, self.cross_kv(enc))):
            H = layer.self_attn.num_heads
            state[f"cross_k.{i}"], state[f"cross_v.{i}"] = k, v
            state[f"self_k.{i}"] = state[f"self_v.{i}"] = k.new_zeros(B, H, 0, self.d_model // H)
        return state

    def decode_step(self, enc: State, state: State, prev: Tensor, need_attention: bool = False):
        t = state["self_k.0"].size(2)
        x = self.embed(self.tgt_embed, prev.unsqueeze(1), offset=t)  # (B, 1, D)
        self_mask = None  # the new position reads the whole prefix, itself included
        cross_mask = enc["src_mask"][:, None, None, :]
        new_state, w_cross = dict(state), []
        for i, layer in enumerate(self.decoder):
            cross_kv = (state[f"cross_k.{i}"], state[f"cross_v.{i}"])
            past_kv = (state[f"self_k.{i}"], state[f"self_v.{i}"])
            x, (k, v), _, wc = layer(x, self_mask, cross_kv, cross_mask, past_kv, need_attention)
            new_state[f"self_k.{i}"], new_state[f"self_v.{i}"] = k, v  # (B, H, t+1, d_k)
            w_cross.append(wc)
        logits = self.generator(self.ln_dec(x)).squeeze(1)  # (B, V)
        attn = {"cross": torch.stack(w_cross, dim=1)[:, :, :, 0]} if need_attention else {}  # (B, L, H, S)
        return logits, new_state, attn
