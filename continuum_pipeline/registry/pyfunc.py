"""The registered model: an MLflow pyfunc around a merged Hugging Face model folder.

Merged weights (LoRA folded in) rather than an adapter: MLflow's transformers flavour mishandles local
PEFT bases, and a plain folder reloads offline with from_pretrained anywhere (vLLM included).
MLflow logs this file as "model from code" (`set_model` below), so no pickled object travels with the model.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc


class ContinuumChatModel(mlflow.pyfunc.PythonModel):
    """predict(conversations) → assistant replies, greedy (the same decoding the gate evaluated)."""

    def load_context(self, context: Any) -> None:
        from continuum_pipeline.serving.generate import Generator

        self.generator = Generator.from_pretrained(context.artifacts["hf_model"])

    # The type hint is MLflow's input contract: a list of conversations, each a list of {role, content}.
    def predict(self, context: Any, model_input: list[list[dict[str, str]]], params: dict | None = None) -> list[str]:
        if hasattr(model_input, "columns") and "messages" in model_input.columns:  # a DataFrame
            model_input = list(model_input["messages"])
        return self.generator.generate([list(c) for c in model_input])


mlflow.models.set_model(ContinuumChatModel())
