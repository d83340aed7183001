"""A base model that is not builtin:tiny: another architecture (GPT-2, whose attention is a Conv1D, not Llama's
q_proj/v_proj) with a hub-style chat template that has no generation markers, loaded with from_pretrained.
LoRA targets come from the architecture (PEFT's all-linear), the loss from prompt/completion pairs, and the
base_model asset's check says what is wrong with a model that cannot be used."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("peft")

from continuum_pipeline.serving.generate import Generator  # noqa: E402
from continuum_pipeline.training import base_model as bm  # noqa: E402
from continuum_pipeline.training.sft import SFTRunConfig, train  # noqa: E402

# What a typical hub tokenizer ships: no {% generation %} block.
HUB_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    texts = ["What goes into carbonara?", "Eggs, pecorino, guanciale and pepper.", "What is mochi made of?",
             "Rice flour, sugar and water."]
    tokenizer = bm.build_tokenizer(texts, vocab_size=300)
    tokenizer.chat_template = HUB_TEMPLATE
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                       pad_token_id=tokenizer.pad_token_id))
    out = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_another_architecture_without_generation_markers_trains_with_detected_lora_targets(gpt2_dir, tmp_path):
    info = bm.check_pretrained(str(gpt2_dir))
    assert info["model_type"] == "gpt2"
    rows = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            for q, a in [("What goes into carbonara?", "Eggs, pecorino, guanciale and pepper."),
                         ("What is mochi made of?", "Rice flour, sugar and water.")] * 8]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows))
    result = train(SFTRunConfig(base_model=str(gpt2_dir), train_file=str(data), eval_file=None,
                                output_dir=str(tmp_path / "out"), max_steps=4, batch_size=4, lora_r=4, lora_alpha=8))
    adapter = json.loads((Path(result.adapter_dir) / "adapter_config.json").read_text())
    layers = {name.rsplit(".", 1)[-1] for name in adapter["target_modules"]}
    assert layers >= {"c_attn", "c_fc"}  # GPT-2's own layers, found by PEFT, not a Llama list
    assert "lm_head" not in layers and not layers & {"q_proj", "v_proj"}
    assert result.metrics["steps"] == 4 and result.metrics["train_loss"] > 0
    answers = Generator.from_pretrained(result.merged_dir, max_new_tokens=4).generate([rows[0][:1]])
    assert len(answers) == 1  # the merged model loads with from_pretrained and answers


def test_a_base_model_that_cannot_serve_chat_is_refused_with_the_fix(gpt2_dir, tmp_path):
    with pytest.raises(ValueError, match="cannot load it with from_pretrained"):
        bm.check_pretrained(str(tmp_path / "missing"))
    plain = tmp_path / "plain"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gpt2_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(plain)
    AutoModelForCausalLM.from_pretrained(gpt2_dir).save_pretrained(plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(config))
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="no chat template"):
        bm.check_pretrained(str(plain))
