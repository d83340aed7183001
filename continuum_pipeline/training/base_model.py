"""A tiny base model built locally: byte-level BPE tokenizer, chat template, small Llama, short pre-training.

The demo cannot download a model, so the flywheel starts from this one. Everything downstream loads it with
`AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`, exactly as it would load a hub model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from continuum_pipeline.progress import Milestones

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)
Say = Callable[[str], None]  # where progress lines go: a logger here, Dagster's context.log in the asset

PAD, BOS, EOS, UNK = "<pad>", "<s>", "<|end|>", "<unk>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# `<|end|>` closes every turn and is the eos token; it sits inside the generation block so the model learns to stop.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{% else %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MARKER_FILE = "continuum_base.json"
_CACHE_VERSION = 2  # bump when the build recipe changes, so old caches are rebuilt


def build_tokenizer(texts: list[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Byte-level BPE (any text round-trips, case kept) with digits split so numbers are copied digit by digit."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS, UNK, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=ROLE_TOKENS,
        chat_template=CHAT_TEMPLATE,
    )


@dataclass
class BaseModelConfig:
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 256
    vocab_size: int = 2000  # upper bound: BPE stops merging earlier on a small corpus
    tie_word_embeddings: bool = True
    copy_drill_ratio: float = 1.0  # echo drills per conversation, fresh each epoch: the copying a real base LM knows
    pretrain_epochs: int = 20
    pretrain_max_steps: int = 1000  # caps the run at about a minute on 2 CPU cores; <= 0: epochs decide
    lr: float = 3e-3
    batch_size: int = 32
    seed: int = 0


def config_hash(conversations: list[list[dict]], vocab_texts: list[str], config: BaseModelConfig) -> str:
    payload = json.dumps([_CACHE_VERSION, conversations, vocab_texts, asdict(config)], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def conversation_texts(conversations: list[list[dict]]) -> list[str]:
    return [message["content"] for conversation in conversations for message in conversation]


def copy_drills(vocab_texts: Sequence[str], count: int, seed: int) -> list[list[dict]]:
    """Conversations whose answer repeats the question: a generic copy skill (induction) the tasks build on.

    Half are domain sentences with fresh random digits; half are random word and number sequences, which no
    bigram statistics can predict, so only copying lowers their loss.
    """
    import random
    import re

    rng = random.Random(seed)
    texts = [t for t in vocab_texts if t.strip()]
    words = sorted({w for t in texts for w in t.split()})
    drills = []
    for i in range(count if texts else 0):
        if i % 2:
            items = rng.choices(words, k=rng.randint(3, 10))
        else:
            items = re.sub(r"\d+", lambda m: _digits(rng, len(m.group())), rng.choice(texts)).split()
        for _ in range(rng.randint(0, 2)):
            items.insert(rng.randint(0, len(items)), rng.choice(["#", ""]) + _digits(rng, rng.randint(2, 8)))
        text = " ".join(items)
        drills.append([{"role": "user", "content": text}, {"role": "assistant", "content": text}])
    return drills


def _digits(rng, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def init_model(tokenizer: PreTrainedTokenizerFast, config: BaseModelConfig) -> PreTrainedModel:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(config.seed)
    model_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(model_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def assistant_batches(tokenizer: PreTrainedTokenizerFast, conversations: list[list[dict]], max_length: int):
    """Tokenized conversations with labels only on assistant tokens (the same masking TRL applies in SFT)."""
    rows = []
    for conversation in conversations:
        out = tokenizer.apply_chat_template(
            conversation, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = out["input_ids"][:max_length]
        labels = [t if m else -100 for t, m in zip(ids, out["assistant_masks"][:max_length], strict=True)]
        rows.append((ids, labels))
    return rows


def pretrain(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, conversations: list[list[dict]],
             config: BaseModelConfig, vocab_texts: Sequence[str] = (), say: Say = log.info) -> list[float]:
    """Full fine-tune with a plain torch loop (no Trainer overhead on a model this small); returns epoch losses.

    Each epoch draws fresh copy drills from `vocab_texts`: a fixed set would be memorised instead of copied.
    """
    import torch

    rows = assistant_batches(tokenizer, conversations, config.max_position_embeddings)
    n_drills = round(config.copy_drill_ratio * len(conversations)) if vocab_texts else 0
    steps_per_epoch = math.ceil((len(rows) + n_drills) / config.batch_size)
    total = steps_per_epoch * config.pretrain_epochs
    if config.pretrain_max_steps > 0:
        total = min(total, config.pretrain_max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    warmup = max(1, total // 20)
    # Linear warmup then cosine decay: stable at the high learning rate a tiny model wants.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    )
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    step, losses, started, report = 0, [], time.monotonic(), Milestones(0.1)
    while step < total:
        drills = copy_drills(vocab_texts, n_drills, seed=config.seed * 100_003 + len(losses))
        epoch_rows = rows + assistant_batches(tokenizer, drills, config.max_position_embeddings)
        order = torch.randperm(len(epoch_rows), generator=generator).tolist()
        epoch_loss, batches = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            if step >= total:
                break
            batch = [epoch_rows[i] for i in order[start:start + config.batch_size]]
            input_ids, labels, attention = _pad(batch, tokenizer.pad_token_id)
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step, epoch_loss, batches = step + 1, epoch_loss + loss.item(), batches + 1
        losses.append(epoch_loss / max(batches, 1))
        if report.due(step, total):
            say(f"pre-training: step {step}/{total}, epoch {len(losses)}, loss {losses[-1]:.4f}, "
                f"{time.monotonic() - started:.0f}s")
    model.eval()
    return losses


def _pad(batch: list[tuple[list[int], list[int]]], pad_id: int):
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(lab)] = torch.tensor(lab)
        attention[row, :len(ids)] = 1
    return input_ids, labels, attention


def train_base_model(conversations: list[list[dict]], vocab_texts: list[str], config: BaseModelConfig,
                     say: Say = log.info) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, list[float]]:
    """Tokenizer, model and pre-training, in memory: deterministic given `config.seed`."""
    tokenizer = build_tokenizer(vocab_texts + conversation_texts(conversations), config.vocab_size)
    model = init_model(tokenizer, config)
    say(f"base model: {model.num_parameters():,} parameters, vocabulary {len(tokenizer)}, "
        f"{len(conversations)} conversations")
    return model, tokenizer, pretrain(model, tokenizer, conversations, config, vocab_texts, say)


def build_base_model(conversations: list[list[dict]], vocab_texts: list[str], out_dir: Path,
                     config: BaseModelConfig | None = None, say: Say = log.info) -> Path:
    """Build (or reuse, when `out_dir` holds the same inputs' hash) the base model; returns `out_dir`."""
    config = config or BaseModelConfig()
    out_dir = Path(out_dir)
    digest = config_hash(conversations, vocab_texts, config)
    marker = out_dir / MARKER_FILE
    if marker.exists() and json.loads(marker.read_text()).get("hash") == digest:
        say(f"base model in {out_dir} is up to date (hash {digest[:12]})")
        return out_dir
    started = time.monotonic()
    marker.unlink(missing_ok=True)  # a rebuild interrupted midway must not pass for the previous build
    model, tokenizer, losses = train_base_model(conversations, vocab_texts, config, say)
    out_dir.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-shard bar per save: noise in the run's log
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # The marker is written last, so an interrupted build is never mistaken for a finished one.
    marker.write_text(json.dumps({
        "hash": digest,
        "config": asdict(config),
        "parameters": model.num_parameters(),
        "conversations": len(conversations),
        "final_loss": losses[-1] if losses else None,
        "seconds": round(time.monotonic() - started, 2),
    }, indent=2))
    say(f"base model saved to {out_dir} in {time.monotonic() - started:.0f}s")
    return out_dir


def pretraining_corpus(function: str | None, n: int,
                       captured: Callable[[], list[list[dict]]]) -> tuple[list[list[dict]], list[str]]:
    """(conversations, tokenizer texts) for builtin:tiny: from a `module:function` hook (called with `n`; it
    returns conversations, or a dict with `conversations` and `texts`), else the task's captured traffic."""
    if function is None:
        conversations = captured()
        if not conversations:
            raise ValueError("base_model builtin:tiny has nothing to pre-train on: the task has no captured "
                             "interactions yet; capture traffic first or set base_model.pretraining_corpus")
        return conversations, []
    import importlib

    module_name, _, attr = function.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"base_model.pretraining_corpus: cannot import {function!r} ({exc}); "
                         "give an importable `package.module:function`") from None
    result = fn(n)
    if isinstance(result, dict):
        return list(result.get("conversations") or []), list(result.get("texts") or [])
    return list(result), []


def check_pretrained(model_id: str, revision: str | None = None) -> dict[str, str | int]:
    """Fail early, with the fix, when a configured base model cannot be loaded or has no chat template."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model_id, revision=revision)
        tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision)
    except (OSError, ValueError) as exc:
        raise ValueError(f"base_model.id {model_id!r}: cannot load it with from_pretrained ({exc}); give a local "
                         "folder or a hub id this machine can reach (HF_HOME / HF_ENDPOINT), or builtin:tiny") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"base_model.id {model_id!r}: its tokenizer has no chat template; pick an instruct/chat "
                         "model or add a chat_template to its tokenizer_config.json")
    return {"architecture": ",".join(config.architectures or [config.model_type]), "model_type": config.model_type,
            "vocabulary": len(tokenizer)}
