"""The runner: consumes `flow.v1.start.<workspace>`, runs each flow once, records the run."""
