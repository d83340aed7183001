"""Greedy, batched, deterministic answers from a causal LM: what the champion serves and what evaluation scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Generator:
    def __init__(self, model: Any, tokenizer: Any, max_new_tokens: int = 48, batch_size: int = 64):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, path: str | Path, max_new_tokens: int = 48, batch_size: int = 64) -> Generator:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(path))
        return cls(model, AutoTokenizer.from_pretrained(str(path)), max_new_tokens, batch_size)

    def generate(self, conversations: list[list[dict]]) -> list[str]:
        """The assistant's next answer to each conversation; a trailing assistant turn (a logged answer) is dropped."""
        import torch

        prompts = [
            self.tokenizer.apply_chat_template(_prompt(messages), tokenize=False, add_generation_prompt=True)
            for messages in conversations
        ]
        lengths = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        # Batches of similar length pad little: faster, and fewer pad tokens in each row's context.
        order = sorted(range(len(prompts)), key=lambda i: lengths[i])
        answers: list[str] = [""] * len(prompts)
        self.tokenizer.padding_side = "left"  # generation appends on the right
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                chunk = order[start:start + self.batch_size]
                enc = self.tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True,
                                     add_special_tokens=False).to(self.model.device)
                out = self.model.generate(
                    **enc,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                )
                texts = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                for i, text in zip(chunk, texts, strict=True):
                    answers[i] = text.strip()
        return answers


def _prompt(messages: list[dict]) -> list[dict]:
    end = len(messages)
    while end and messages[end - 1]["role"] == "assistant":
        end -= 1
    return [{"role": m["role"], "content": m["content"]} for m in messages[:end]]
