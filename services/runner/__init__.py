"""The runner: consumes `flow.start`, runs the flow's Python function once, records the run."""
