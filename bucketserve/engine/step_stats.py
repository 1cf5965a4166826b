"""What each decode step ran: its live rows (before padding) and its decoder. The engine owns one; the
planner reads its counts (get_stats()["live_rows"]) and never the engine."""
from __future__ import annotations


class StepStats:
    def __init__(self):
        self.live_rows: dict[int, int] = {}  # live rows -> decode steps that ran with that many
        self.live_rows_per_decoder: dict[int, dict[int, int]] = {}  # decoder batch size -> the same, on it

    def record(self, live_rows: int, decoder_batch_size: int) -> None:
        self.live_rows[live_rows] = self.live_rows.get(live_rows, 0) + 1
        on_decoder = self.live_rows_per_decoder.setdefault(decoder_batch_size, {})
        on_decoder[live_rows] = on_decoder.get(live_rows, 0) + 1
