"""Services: `continuum serve` — the OTLP / Langfuse-compatible receiver and the OpenAI-compatible gateway."""
