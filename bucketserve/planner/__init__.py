"""Decoder batch sizes planned from the traffic and the measured step costs.

Data and pure functions only: a traffic log (traffic_log), the live rows each decode step ran
(live_rows), a decode step's cost and its fit (cost_model), what each graph costs to build and hold
(graph_costs), the exact search over sets of sizes (search), the fixed strategies it is compared with
(strategies), the comparison table (report) and plot (plot), a trace replayed through the real Scheduler
on a simulated clock (replay), arrival models that generate traces (arrivals), timing a loaded model's
decode steps (calibration), and turning decoder_batch_sizes="auto" into a list (auto). The planner reads
statistics and a cost table; it never reaches into the engine.
"""
