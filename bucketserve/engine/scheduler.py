"""The queues: waiting (FIFO) and running (at most max_num_seqs). Decides what each step runs."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, Status


@dataclass
class StepPlan:
    decodes: list[Sequence] = field(default_factory=list)  # running: one token each, on one decoder graph
    prefills: list[Sequence] = field(default_factory=list)  # admitted from waiting: prefilled, then running


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
        # Every running sequence needs a slot for the token it feeds; if blocks run out, the newest
        # running sequence goes back to the front of the queue and is recomputed later (vLLM's preemption).
        for seq in list(self.running):
            if seq not in self.running:
                continue
            while not self.block_manager.can_hold(seq, seq.num_tokens) and self.running[-1] is not seq:
                self._preempt(self.running[-1])
            if not self.block_manager.can_hold(seq, seq.num_tokens):
                self._preempt(seq)
                continue
            self.block_manager.grow(seq, seq.num_tokens)
        plan.decodes = list(self.running)

        # Admit waiting sequences in order while rows, the token budget and blocks allow.
        budget = self.max_num_batched_tokens
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if plan.prefills and seq.num_tokens > budget:
                break
            if not self.block_manager.can_hold(seq, seq.num_tokens):
                break
            self.waiting.popleft()
            self.block_manager.grow(seq, seq.num_tokens)
            seq.status = Status.RUNNING
            self.running.append(seq)
            plan.prefills.append(seq)
            budget -= seq.num_tokens
        return plan

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
