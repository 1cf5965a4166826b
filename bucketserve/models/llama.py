"""The Llama family (Llama, Mistral, Qwen2, Qwen3) as plain PyTorch over a paged KV cache.

Architecture only: no compilation, no serving logic. Parameter names match Hugging Face checkpoints so
weights load by name. Every forward takes a batch of `rows`, each with `query_len` tokens:
prefill is up to batch_size rows of up to `prefill_chunk_size` tokens, a decode step is B rows of 1 token.

The KV cache is one tensor [num_layers, 2, num_slots, num_kv_heads, head_dim] owned by the runtime; a
slot is (block id * block_size + offset). Graphs write the new keys/values into `slot_mapping` in place
and read each row's context through its `block_table`.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .projections import EAGER, GraphForm


class Linear(nn.Linear):
    """nn.Linear that multiplies in the form its graph is written in (models/projections.py). The quantized
    form (quantization/modules.QuantizedLinear) has the same methods, so a transform treats both alike
    (tensor_parallel.ShardableLinear)."""

    def forward(self, x: torch.Tensor, form: GraphForm = EAGER) -> torch.Tensor:
        out = self.multiply(x, form)
        return out if self.bias is None else out + self.bias

    def multiply(self, x: torch.Tensor, form: GraphForm = EAGER) -> torch.Tensor:
        """x @ weight.T, without the bias."""
        return form.project(x, self.weight)

    def take_rows(self, start: int, stop: int) -> None:
        """Keep output rows [start, stop) (a copy, so the full tensor can be freed)."""
        self.weight = nn.Parameter(self.weight[start:stop].clone(), requires_grad=False)
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias[start:stop].clone(), requires_grad=False)
        self.out_features = stop - start

    def take_inputs(self, start: int, stop: int) -> None:
        """Keep inputs [start, stop) of every row (a copy); the bias stays whole."""
        self.weight = nn.Parameter(self.weight[:, start:stop].clone(), requires_grad=False)
        self.in_features = stop - start

    def tie_to(self, embedding: nn.Embedding) -> None:
        """Use the embedding's weight as this layer's (tie_word_embeddings): one tensor for both."""
        self.weight = embedding.weight


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 whatever the weights' dtype, as HF does.
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding, with llama3 scaling when the checkpoint asks for it."""
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    # llama3: long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotary_table(config: ModelConfig, max_seq_len: int) -> torch.Tensor:
    """cos and sin for every position < max_seq_len, stacked: [2, max_seq_len, head_dim] in fp32."""
    freqs = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), rotary_inv_freq(config))
    emb = torch.cat((freqs, freqs), dim=-1)
    return torch.stack((emb.cos(), emb.sin()))


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class Context(NamedTuple):
    """Where each row's context lies in the KV cache, in the forms the attention paths read it."""

    slots: torch.Tensor  # [rows, context_len]: the slot of each context position
    mask: torch.Tensor  # [rows, query_len, context_len]: which of them each token sees
    block_tables: torch.Tensor  # [rows, blocks_per_seq]
    positions: torch.Tensor  # [rows, query_len]: each token sees context positions 0..its own
    block_size: int


def decode_attention(q, keys, values, context_mask, num_kv_heads: int):
    """One query token per row attending over its context: q [rows, 1, heads, dim], keys and values
    [rows, context, kv_heads, dim] gathered from the cache; returns [rows, 1, heads, dim].

    Multiply-and-sum reductions, not SDPA over a gathered copy: compiled, the gather of each key and value
    fuses into the reduction that reads it, so a decode step reads its context once instead of copying it
    first (which tripled the KV traffic of a full-context step). Each query head of a KV group has its own
    reduction, stacked: Inductor fuses them into one loop that loads each key (and value) once for the
    whole group, where one reduction broadcast over the group reloaded it per head and ran at half the
    speed (docs/bench/attention_forms.py). Scores and softmax are computed in fp32.
    """
    rows, _, num_heads, head_dim = q.shape
    groups = num_heads // num_kv_heads
    query = q.view(rows, 1, num_kv_heads, groups, head_dim).float()
    keys, values = keys.float(), values.float()
    scores = torch.stack([(query[:, :, :, g] * keys).sum(-1) for g in range(groups)], dim=-1) * head_dim**-0.5
    scores = scores.masked_fill(~context_mask.view(rows, -1, 1, 1), float("-inf"))  # [rows, context, kv_heads, groups]
    probs = torch.softmax(scores, dim=1)
    out = torch.stack([(probs[..., g, None] * values).sum(1) for g in range(groups)], dim=2)  # [rows, kv_heads, groups, dim]
    return out.reshape(rows, 1, num_heads, head_dim).to(q.dtype)


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_proj = Linear(config.hidden_size, self.num_heads * self.head_dim, bias=config.qkv_bias)
        self.k_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.v_proj = Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=config.qkv_bias)
        self.o_proj = Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, hidden, cos, sin, kv_cache, slot_mapping, context: Context, form):
        rows, query_len, _ = hidden.shape
        q = self.q_proj(hidden, form).view(rows, query_len, self.num_heads, self.head_dim)
        k = self.k_proj(hidden, form).view(rows, query_len, self.num_kv_heads, self.head_dim)
        v = self.v_proj(hidden, form).view(rows, query_len, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        # Write this step's keys and values into their slots, in place, then read every row's context.
        # index_put_ on the cache tensor itself: written through a view (index_copy_ on a select), the
        # AOTInductor graph cloned the whole cache and copied it back on every call instead.
        slots = slot_mapping.flatten()
        layer = torch.full_like(slots, self.layer_index)
        kv_cache.index_put_((layer, torch.zeros_like(slots), slots), k.flatten(0, 1).to(kv_cache.dtype))
        kv_cache.index_put_((layer, torch.ones_like(slots), slots), v.flatten(0, 1).to(kv_cache.dtype))
        if form.attention_kernel:  # one token per row, read straight from the cache (kernels/paged_attention.cpp)
            out = torch.ops.bucketserve.paged_decode_attention(
                q[:, 0], kv_cache, self.layer_index, context.block_tables, context.positions[:, 0], context.block_size
            )
            return self.o_proj(out.reshape(rows, 1, self.num_heads * self.head_dim), form)
        context_k = kv_cache[self.layer_index, 0][context.slots]  # [rows, context_len, kv_heads, head_dim]
        context_v = kv_cache[self.layer_index, 1][context.slots]
        if form.decode_attention:
            out = decode_attention(q, context_k, context_v, context.mask, self.num_kv_heads)
            return self.o_proj(out.reshape(rows, 1, self.num_heads * self.head_dim), form)

        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            context_k.transpose(1, 2).to(q.dtype),
            context_v.transpose(1, 2).to(q.dtype),
            attn_mask=context.mask.unsqueeze(1),
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(rows, query_len, self.num_heads * self.head_dim), form)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.gate_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x, form):
        return self.down_proj(F.silu(self.gate_proj(x, form)) * self.up_proj(x, form), form)


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, hidden, cos, sin, kv_cache, slot_mapping, context: Context, form):
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, kv_cache, slot_mapping, context, form)
        return hidden + self.mlp(self.post_attention_layernorm(hidden), form)


class Backbone(nn.Module):
    """Named `model` inside PagedCausalLM so parameter names match HF checkpoints."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class PagedCausalLM(nn.Module):
    """The Llama-family causal LM over the paged KV cache, HF's parameter names (not the user's class of that
    name, modeling.LlamaForCausalLM, which compiles and serves one of these)."""

    def __init__(self, config: ModelConfig, max_seq_len: int, block_size: int):
        super().__init__()
        self.config = config
        self.max_seq_len = max_seq_len
        self.block_size = block_size
        self.model = Backbone(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()
        self.make_buffers(self.lm_head.weight.device)

    def make_buffers(self, device: torch.device) -> None:
        """Tables derived from the config, not stored in checkpoints (rebuilt after loading on `meta`)."""
        self.register_buffer("rotary", rotary_table(self.config, self.max_seq_len).to(device), persistent=False)
        self.register_buffer("context_positions", torch.arange(self.max_seq_len, device=device), persistent=False)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            # Through the layer, which knows its own weight's form (a transform may have swapped both modules).
            self.lm_head.tie_to(self.model.embed_tokens)

    def hidden_states(self, input_ids, positions, slot_mapping, block_tables, context_positions, kv_cache, form: GraphForm = EAGER):
        """Final-norm hidden states [rows, query_len, hidden] of every token.

        input_ids, positions, slot_mapping: [rows, query_len]; block_tables: [rows, blocks_per_seq].
        context_positions: [context_len], 0, 1, ...: the positions each row reads from its blocks (every
        position a token may attend to must be among them; past a row's own position they are masked).
        form: how the forward is written (models/projections.py), see DecoderGraph.
        """
        # One gather of both tables, [rows, query_len, 1, head_dim] each: rotary[0] alone would be a
        # computation on a constant, which a freezing compile (the prefill's) folds into a copy of it.
        cos, sin = self.rotary[:, positions].unsqueeze(3)
        # Slot of each context position in each row's blocks: [rows, context_len].
        blocks, offsets = context_positions // self.block_size, context_positions % self.block_size
        # A token sees every context position up to its own (causal over the whole sequence so far).
        # Whatever a form's attention leaves unread, torch.export drops from the graph.
        context = Context(
            slots=block_tables[:, blocks] * self.block_size + offsets,
            mask=context_positions.view(1, 1, -1) <= positions.unsqueeze(-1),
            block_tables=block_tables,
            positions=positions,
            block_size=self.block_size,
        )
        hidden = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            hidden = layer(hidden, cos, sin, kv_cache, slot_mapping, context, form)
        return self.model.norm(hidden)


class PrefillGraph(nn.Module):
    """One chunk of each of `rows` prompts: returns the logits of each row's last real token and every
    hidden state ([rows, chunk_len, hidden]).

    The number of rows, the chunk's length and context_positions' are all free in the compiled graph (see
    graph_specs): the runtime prefills the prompts that arrive together in one call, passes the longest
    chunk's real tokens rounded up to a few, and only the context they reach, so a 32-token prompt does not
    pay for a 128-token chunk over all max_seq_len positions. A row may start mid-sequence: its earlier
    positions are read from its blocks like a decode step's.
    """

    def __init__(self, model: PagedCausalLM, form: GraphForm = EAGER):
        super().__init__()
        self.model = model
        self.form = form

    def forward(self, input_ids, positions, slot_mapping, block_tables, context_positions, last_index, kv_cache):
        hidden = self.model.hidden_states(
            input_ids, positions, slot_mapping, block_tables, context_positions, kv_cache, self.form
        )
        # Each row's last real token: [rows, hidden].
        last_hidden = hidden.gather(1, last_index.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1]))[:, 0]
        return self.model.lm_head(last_hidden, self.form).float(), hidden


class DecoderGraph(nn.Module):
    """One token for each of B rows: returns B rows of logits.

    context_positions is an input whose length the compiled graph leaves free (see graph_specs), so a step
    reads only as many context positions as its longest row needs instead of all max_seq_len.

    Compiled decoders take one of three forms (compiler/graph_specs.py): on the CPU in fp32,
    kernel_decode_form where the kernel library builds for AVX-512 (both our kernels: the attention, which
    reads each row's context up to the row's own position whatever context_positions' length, and the GEMM
    over blocked weights) or COMPILED_CPU_DECODE (the attention kernel, Inductor's GEMM template); elsewhere
    COMPILED_DECODE, which writes the attention as multiply-and-sum reductions that Inductor fuses into loops
    reading each context position once. Run eagerly those reductions would materialise large products, so
    the eager engine keeps SDPA and dense_linear. All compute the same function.
    """

    def __init__(self, model: PagedCausalLM, form: GraphForm = EAGER):
        super().__init__()
        self.model = model
        self.form = form

    def forward(self, input_ids, positions, slot_mapping, block_tables, context_positions, kv_cache):
        hidden = self.model.hidden_states(
            input_ids.unsqueeze(1), positions.unsqueeze(1), slot_mapping.unsqueeze(1), block_tables,
            context_positions, kv_cache, self.form,
        )
        return self.model.lm_head(hidden[:, 0], self.form).float()
