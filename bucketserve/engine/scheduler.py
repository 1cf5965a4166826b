"""The queues: waiting (FIFO) and running (at most max_num_seqs). Decides what each step runs.

A step decodes every running sequence whose prefill is done and prefills at most max_num_batched_tokens
prompt tokens: first the rest of prompts already being prefilled, then newly admitted ones, so a long
prompt is prefilled over several steps and the decoding sequences never wait for more than one budget.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, Status


@dataclass
class PrefillChunk:
    seq: Sequence
    start: int  # the first position it computes (seq.num_computed_tokens when scheduled)
    num_tokens: int

    @property
    def completes_prefill(self) -> bool:
        return self.start + self.num_tokens == self.seq.prefill_target


@dataclass
class StepPlan:
    decodes: list[Sequence] = field(default_factory=list)  # running: one token each, on one decoder graph
    prefills: list[PrefillChunk] = field(default_factory=list)  # prefilled together, one row each


class Scheduler:
    def __init__(self, max_num_seqs: int, max_num_batched_tokens: int, block_manager: BlockManager):
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.block_manager = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def schedule(self) -> StepPlan:
        plan = StepPlan()
        # Every decoding sequence needs a slot for the token it feeds; if blocks run out, the newest
        # running sequence goes back to the front of the queue and is recomputed later (vLLM's preemption).
        for seq in list(self.running):
            if seq not in self.running or seq.is_prefilling:
                continue  # a prefilling sequence got all its blocks when admitted
            while not self.block_manager.can_hold(seq, seq.num_tokens) and self.running[-1] is not seq:
                self._preempt(self.running[-1])
            if not self.block_manager.can_hold(seq, seq.num_tokens):
                self._preempt(seq)
                continue
            self.block_manager.grow(seq, seq.num_tokens)
        plan.decodes = [seq for seq in self.running if not seq.is_prefilling]

        budget = self.max_num_batched_tokens
        for seq in self.running:  # prompts part-way through their prefill go first
            if seq.is_prefilling and budget > 0:
                budget -= self._plan_prefill(plan, seq, budget)
        # Admit waiting sequences in order while rows, the token budget and blocks allow.
        while self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            seq = self.waiting[0]
            # prompt_logprobs need the whole prompt's hidden states: such a request computes it all.
            use_cache = seq.params.prompt_logprobs is None
            cached = self.block_manager.cached_prefix(seq, use_cache)
            if not self.block_manager.can_admit(seq, cached):
                break
            self.waiting.popleft()
            self.block_manager.admit(seq, cached, looked_up=use_cache)
            if seq.num_cached_tokens is None:
                seq.num_cached_tokens = seq.num_computed_tokens
            seq.status = Status.RUNNING
            self.running.append(seq)
            budget -= self._plan_prefill(plan, seq, budget)
        return plan

    @staticmethod
    def _plan_prefill(plan: StepPlan, seq: Sequence, budget: int) -> int:
        num_tokens = min(seq.prefill_target - seq.num_computed_tokens, budget)
        plan.prefills.append(PrefillChunk(seq, seq.num_computed_tokens, num_tokens))
        return num_tokens

    def _preempt(self, seq: Sequence) -> None:
        self.num_preemptions += 1
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        """Free a finished or aborted sequence's blocks at once."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.block_manager.free(seq)
