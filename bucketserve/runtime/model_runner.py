"""Device work: the weights (once), the KV cache, the loaded graphs; "prefill this", "decode these N"."""
from __future__ import annotations

import bisect
from pathlib import Path

import torch

from ..compiler import aoti
from ..compiler.directory_layout import GRAPHS_DIR
from ..compiler.graph_inputs import check_graph_inputs
from ..compiler.graph_specs import PREFILL, context_len_through, decoder_name, graph_constants, prefill_width
from ..config import CompileConfig
from ..kernels import library
from ..models.config import ModelConfig
from ..models.llama import DecoderGraph, PagedCausalLM, PrefillGraph
from .kv_cache import DUMMY_BLOCK, KVCache
from .step import PrefillOutput, StepInput, StepOutput


class ModelRunner:
    """One rank's device work. Its public methods are what an executor's call(method, *args) runs, on every
    rank alike under tensor parallelism: a new one needs no edit anywhere else (runtime/executor.py)."""

    def __init__(self, directory: Path, model: PagedCausalLM, compile_config: CompileConfig, device: torch.device):
        """directory: the folder holding this rank's graphs/ (the compiled directory itself without TP)."""
        self.compile_config = compile_config
        self.model_config: ModelConfig = model.config
        self.device = device
        self.model = model
        self.kv_cache = KVCache(model, compile_config, device)
        self.decoder_batch_sizes = sorted(compile_config.decoder_batch_sizes)  # ascending, for bisect
        prefill, decoder = PrefillGraph(model), DecoderGraph(model)  # eager: dense_linear and SDPA (see DecoderGraph)
        # One reordered copy of each weight for all the compiled graphs that multiply through it (packed_weights).
        self.packed_weights: dict[tuple, torch.Tensor] = {}
        if compile_config.compiler == "eager":
            self.prefill_graph = prefill
            self.decoders = {b: decoder for b in self.decoder_batch_sizes}
        else:
            graphs = directory / GRAPHS_DIR
            # As compiled, before any graph runs: a graph handed another cache or weights would run out of bounds.
            check_graph_inputs(graphs, compile_config, self.kv_cache.tensor, model.model.norm.weight.dtype)
            library.load_from(graphs)  # before the graphs that call its kernels
            self.prefill_graph = aoti.load_graph(graphs / f"{PREFILL}.pt2", graph_constants(prefill), self.packed_weights)
            self.decoders = {
                b: aoti.load_graph(graphs / f"{decoder_name(b)}.pt2", graph_constants(decoder), self.packed_weights)
                for b in self.decoder_batch_sizes
            }
        # Counted since load: which decoder each step ran on, and how many rows were padding.
        self.decode_steps_per_decoder = {b: 0 for b in compile_config.decoder_batch_sizes}
        self.padded_rows = 0

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def packed_weight_bytes(self) -> int:
        """The reordered copies the compiled graphs read (packed_weights), on top of weight_bytes."""
        return sum(t.numel() * t.element_size() for t in self.packed_weights.values())

    def decoder_batch_size_for(self, num_seqs: int) -> int:
        """The smallest compiled decoder batch size >= num_seqs."""
        if not 1 <= num_seqs <= self.decoder_batch_sizes[-1]:
            raise ValueError(
                f"cannot decode {num_seqs} sequences in one step: the compiled decoders take 1 to "
                f"{self.decoder_batch_sizes[-1]} (batch_size); decode in groups of at most that many"
            )
        return self.decoder_batch_sizes[bisect.bisect_left(self.decoder_batch_sizes, num_seqs)]

    def _tensor(self, values) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long).to(self.device)

    def execute(self, step: StepInput) -> StepOutput:
        """One engine step: the decode rows, then the prefill chunks."""
        out = StepOutput()
        if step.decode is not None:
            rows = step.decode
            out.decode_logits = self.decode(rows.input_ids, rows.positions, rows.block_tables)
            out.decoder_batch_size = self.decoder_batch_size_for(len(rows.input_ids))
        if step.prefill is not None:
            chunks = step.prefill
            out.prefills = self.prefill_batch(chunks.token_ids, chunks.block_tables, chunks.starts, chunks.return_hidden)
        return out

    def prefill(self, token_ids: list[int], block_table: list[int], start: int = 0, return_hidden: bool = False) -> PrefillOutput:
        """Run token_ids (at positions start, start+1, ...) chunk by chunk into the sequence's blocks."""
        return self.prefill_batch([token_ids], [block_table], [start], [return_hidden])[0]

    @torch.inference_mode()
    def prefill_batch(self, token_ids: list[list[int]], block_tables: list[list[int]], starts: list[int],
                      return_hidden: list[bool]) -> list[PrefillOutput]:
        """Prefill several sequences together, one row each (up to batch_size rows per call), each from its
        own start position: the positions before it are already in its blocks (an earlier chunk, or
        blocks of the prefix cache that other sequences may hold too), and only token_ids are written."""
        cache, config = self.kv_cache, self.compile_config
        for ids, table, start in zip(token_ids, block_tables, starts, strict=True):
            end = start + len(ids)
            if not ids or start < 0 or end > config.max_seq_len:
                raise ValueError(f"prefill needs 1 to max_seq_len={config.max_seq_len} tokens, got positions {start}..{end}")
            cache.padded_block_table(table)  # raises on a bad table
            cache.slot(table, end - 1)  # raises before any chunk runs when the blocks cannot hold the prompt
        rows = list(range(len(token_ids)))
        logits: list[torch.Tensor | None] = [None] * len(rows)
        hidden: list[list[torch.Tensor]] = [[] for _ in rows]
        done = [0] * len(rows)  # tokens of each row run so far
        while rows:
            for group in _groups(rows, config.batch_size):
                self._prefill_call(group, token_ids, block_tables, starts, done, logits, hidden, return_hidden)
            rows = [r for r in rows if done[r] < len(token_ids[r])]
        return [PrefillOutput(logits[r], torch.cat(hidden[r]) if return_hidden[r] else None) for r in range(len(token_ids))]

    def _prefill_call(self, group, token_ids, block_tables, starts, done, logits, hidden, return_hidden) -> None:
        """One prefill graph call: the next chunk of each row in group, padded to the longest (rounded up)."""
        cache, config = self.kv_cache, self.compile_config
        chunk_size = config.prefill_chunk_size
        real = [min(chunk_size, len(token_ids[r]) - done[r]) for r in group]
        width = prefill_width(max(real), chunk_size)
        ids, positions, slots = [], [], []
        for r, n in zip(group, real, strict=True):
            first = starts[r] + done[r]
            ids.append(token_ids[r][done[r] : done[r] + n] + [0] * (width - n))
            positions.append([min(first + i, config.max_seq_len - 1) for i in range(width)])
            # Padding tokens write only into the dummy block.
            slots.append([cache.slot(block_tables[r], first + i) if i < n else cache.dummy_slot(i) for i in range(width)])
        furthest = max(starts[r] + done[r] + n - 1 for r, n in zip(group, real, strict=True))
        out_logits, out_hidden = self.prefill_graph(
            self._tensor(ids), self._tensor(positions), self._tensor(slots),
            self._tensor([cache.padded_block_table(block_tables[r]) for r in group]),
            self._context_positions(furthest), self._tensor([n - 1 for n in real]), cache.tensor,
        )
        for i, (r, n) in enumerate(zip(group, real, strict=True)):
            done[r] += n
            if done[r] == len(token_ids[r]):
                logits[r] = out_logits[i]
            if return_hidden[r]:
                hidden[r].append(out_hidden[i, :n])

    def decode(self, input_ids: list[int], positions: list[int], block_tables: list[list[int]]) -> torch.Tensor:
        """One token for each of N sequences on the smallest decoder >= N; returns [N, vocab] fp32 logits.
        (inference_mode as a block, not a decorator: the decorator is one more frame on the hot path.)"""
        num_seqs = len(input_ids)
        batch = self.decoder_batch_size_for(num_seqs)
        cache = self.kv_cache
        tables = [cache.padded_block_table(t) for t in block_tables]
        slots = [cache.slot(t, p) for t, p in zip(block_tables, positions, strict=True)]
        padding = batch - num_seqs
        # Padding rows: token 0 at position 0 of the dummy block, which no sequence owns.
        with torch.inference_mode():
            logits = self.decoders[batch](
                self._tensor(list(input_ids) + [0] * padding),
                self._tensor(list(positions) + [0] * padding),
                self._tensor(slots + [cache.dummy_slot()] * padding),
                self._tensor(tables + [[DUMMY_BLOCK] * cache.blocks_per_sequence] * padding),
                self._context_positions(max(positions)),
                cache.tensor,
            )
        self.decode_steps_per_decoder[batch] += 1
        self.padded_rows += padding
        return logits[:num_seqs]

    def _context_positions(self, last_position: int) -> torch.Tensor:
        """0, 1, ... as far as a call whose furthest token sits at last_position reads (a view, no copy)."""
        return self.model.context_positions[: context_len_through(last_position, self.compile_config.max_seq_len)]

    @torch.inference_mode()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits of final-norm hidden states, with the same lm_head weights the graphs use."""
        return self.model.lm_head(hidden).float()


def _groups(rows: list[int], size: int) -> list[list[int]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]
