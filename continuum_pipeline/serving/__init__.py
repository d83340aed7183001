"""Serving a model: greedy, batched generation (`serving.generate.Generator`); torch loads on first use."""
