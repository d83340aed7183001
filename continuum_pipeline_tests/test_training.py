"""The learning loop on a toy model: tokenizer, chat template, base model, LoRA SFT, merge, MLflow, serving."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("peft")

from continuum_pipeline.serving.generate import Generator  # noqa: E402
from continuum_pipeline.training import base_model as bm  # noqa: E402
from continuum_pipeline.training.sft import SFTRunConfig, main, train  # noqa: E402

SYSTEM = "You are the support assistant."
TINY = bm.BaseModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, max_position_embeddings=128,
                          pretrain_epochs=2, pretrain_max_steps=12, batch_size=8, lr=3e-3, seed=0)


def conversation(question: str, answer: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question},
            {"role": "assistant", "content": answer}]


def toy_conversations(n: int, first_order: int = 48213) -> list[list[dict]]:
    rows = []
    for i in range(n):
        order = first_order + 7 * i
        if i % 2:
            rows.append(conversation(f"Where is my refund for order #{order}?",
                                     f"Refunds for order #{order} reach your card within 5 business days."))
        else:
            rows.append(conversation("How do I reset my password?",
                                     "Click Forgot password on the login page and follow the emailed link."))
    return rows


VOCAB = [SYSTEM, "Where is my refund for order #12345?", "Refunds reach your card within 5 business days.",
         "How do I reset my password?", "Click Forgot password on the login page and follow the emailed link."]


def write_jsonl(path: Path, conversations: list[list[dict]]) -> str:
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return str(path)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return bm.build_base_model(toy_conversations(24), VOCAB, tmp_path_factory.mktemp("base"), TINY)


@pytest.fixture(scope="module")
def sft_run(base_dir: Path, tmp_path_factory):
    work = tmp_path_factory.mktemp("sft")
    events: list[tuple[str, dict]] = []
    config = SFTRunConfig(
        base_model=str(base_dir),
        train_file=write_jsonl(work / "train.jsonl", toy_conversations(16, first_order=51000)),
        eval_file=write_jsonl(work / "eval.jsonl", toy_conversations(4, first_order=61000)),
        output_dir=str(work / "out"),
        lora_r=4, lora_alpha=8, max_steps=6, batch_size=8, learning_rate=1e-2,
        mlflow_tracking_uri=f"sqlite:///{work / 'mlflow.db'}", run_name="toy", tags={"cycle": "1"},
    )
    return config, train(config, progress=lambda event, info: events.append((event, info))), events


def test_tokenizer_round_trips_text_and_unseen_digits(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = bm.build_tokenizer(VOCAB)
    text = "Refunds for order #90817 reach Zoë's card on 2026-03-14."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert [t for t in tokens if t.isdigit()] == list("90817") + list("20260314")  # one token per digit
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
    assert (reloaded.eos_token, reloaded.pad_token, reloaded.bos_token) == (bm.EOS, bm.PAD, bm.BOS)


def test_chat_template_marks_only_assistant_tokens():
    from trl.chat_template_utils import has_generation_markers, is_chat_template_stop_token_trained

    tokenizer = bm.build_tokenizer(VOCAB)
    messages = conversation("Where is my refund for order #48213?", "Refunds for order #48213 arrive soon.")
    assert has_generation_markers(tokenizer.chat_template)
    assert is_chat_template_stop_token_trained(tokenizer)  # TRL's check that the model learns to stop
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(masked) == messages[-1]["content"] + bm.EOS
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>") and SYSTEM in prompt


def test_trl_labels_cover_only_assistant_tokens(base_dir):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    messages = conversation("Where is my refund for order #48213?", "Refunds for order #48213 arrive soon.")
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base_dir),
        args=SFTConfig(output_dir="unused", assistant_only_loss=True, use_cpu=True, report_to=[], bf16=False,
                       activation_checkpointing=False, save_strategy="no"),
        train_dataset=Dataset.from_list([{"messages": messages}]),
        processing_class=tokenizer,
    )
    labels = [t for t in trainer.train_dataset[0]["labels"] if t != -100]
    assert tokenizer.decode(labels) == messages[-1]["content"] + bm.EOS


def test_base_model_reloads_and_generates_like_the_in_memory_model(base_dir):
    prompts = [c[:2] for c in toy_conversations(6, first_order=70001)]
    model, tokenizer, losses = bm.train_base_model(toy_conversations(24), VOCAB, TINY)  # same seed: same model
    in_memory = Generator(model, tokenizer, max_new_tokens=12).generate(prompts)
    reloaded = Generator.from_pretrained(base_dir, max_new_tokens=12).generate(prompts)
    assert in_memory == reloaded and len(reloaded) == 6 and all(isinstance(a, str) for a in reloaded)
    assert losses[-1] < losses[0]
    marker = json.loads((base_dir / bm.MARKER_FILE).read_text())
    assert marker["parameters"] == model.num_parameters()


def test_build_base_model_cache_hit_skips_training(base_dir, monkeypatch):
    marker = json.loads((base_dir / bm.MARKER_FILE).read_text())
    monkeypatch.setattr(bm, "train_base_model", lambda *a, **k: pytest.fail("retrained despite a cache hit"))
    started = time.monotonic()
    assert bm.build_base_model(toy_conversations(24), VOCAB, base_dir, TINY) == base_dir
    assert time.monotonic() - started < 1.0
    assert json.loads((base_dir / bm.MARKER_FILE).read_text())["hash"] == marker["hash"]
    assert bm.config_hash(toy_conversations(24), VOCAB, replace(TINY, seed=1)) != marker["hash"]


def test_sft_adapter_reloads_and_merged_model_generates_the_same(base_dir, sft_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, result, events = sft_run
    assert result.train_rows == 16 and result.metrics["steps"] == 6.0
    assert {"train_loss", "eval_loss", "seconds"} <= set(result.metrics)
    assert [e for e, _ in events][0] == "start" and events[-1][0] == "end" and "log" in [e for e, _ in events]
    adapter_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), result.adapter_dir)
    prompts = [c[:2] for c in toy_conversations(6, first_order=80001)]
    with_adapter = Generator(adapter_model, AutoTokenizer.from_pretrained(base_dir), 12).generate(prompts)
    assert with_adapter == Generator.from_pretrained(result.merged_dir, 12).generate(prompts)
    assert not any(Path(result.merged_dir).glob("adapter_config.json"))  # a plain model: serving needs no PEFT


def test_sft_logs_params_metrics_and_adapter_to_mlflow(sft_run):
    from mlflow.tracking import MlflowClient

    config, result, _ = sft_run
    run = MlflowClient(config.mlflow_tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.params["lora_r"] == "4" and run.data.params["base_model"] == config.base_model
    assert {"train_loss", "eval_loss", "steps", "seconds"} <= set(run.data.metrics)
    assert run.data.tags["cycle"] == "1"
    artifacts = {Path(a.path).name for a in MlflowClient(config.mlflow_tracking_uri).list_artifacts(run.info.run_id,
                                                                                                   "adapter")}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= artifacts


def test_sft_script_prints_the_result_as_json_on_the_last_line(base_dir, tmp_path, capsys):
    config = {"base_model": str(base_dir), "train_file": write_jsonl(tmp_path / "t.jsonl", toy_conversations(8)),
              "eval_file": None, "output_dir": str(tmp_path / "out"), "max_steps": 2, "lora_r": 2, "batch_size": 4}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main([str(tmp_path / "config.json")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert Path(result["merged_dir"], "model.safetensors").exists() and result["mlflow_run_id"] is None


def test_packages_import_without_torch():
    code = ("import sys, continuum_pipeline.training, continuum_pipeline.serving, continuum_pipeline.training.sft, "
            "continuum_pipeline.training.base_model, continuum_pipeline.serving.generate; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_pipes_progress_reports_start_about_every_tenth_and_end():
    from continuum_pipeline.training.pipes_job import progress_reporter

    lines: list[str] = []
    report = progress_reporter(lines.append)
    report("start", {"train_rows": 90, "eval_rows": 10, "base_model": "/models/base"})
    for step in range(10, 201, 10):  # the trainer logs every 10 steps
        report("log", {"step": step, "max_steps": 200, "loss": 1.0 / step})
    report("log", {"step": 200, "max_steps": 200, "train_runtime": 3.0})  # the trainer's summary: no loss
    report("end", {"seconds": 4.2, "metrics": {"train_loss_final": 0.005, "eval_loss": 0.01}})
    assert lines[0] == "training on 90 rows (10 validation) from /models/base"
    steps = [int(line.split()[1].split("/")[0]) for line in lines[1:-1]]
    assert steps == [10, 30, 50, 70, 90, 110, 130, 150, 170, 190]  # ~10%, not every log
    assert lines[1] == "step 10/200 loss 0.1000"
    assert lines[-1] == "done in 4s: final loss 0.0050, validation loss 0.0100"


def test_milestones_fire_first_then_every_share_and_at_the_end():
    from continuum_pipeline.progress import Milestones

    quarters = Milestones(0.25)
    assert [done for done in range(64, 751, 64) if quarters.due(done, 750)] == [64, 256, 448, 640]
    assert quarters.due(750, 750)  # the end always reports when at_end
    quiet_end = Milestones(0.5, at_end=False)
    assert [done for done in (1, 2, 5, 6, 7) if quiet_end.due(done, 7)] == [1, 5]  # no extra line at 7 of 7


def toy_corpus(n: int) -> dict[str, list]:
    """A `base_model.pretraining_corpus` hook (imported by path, as a task YAML names it)."""
    return {"conversations": toy_conversations(n), "texts": VOCAB}


def toy_corpus_list(n: int) -> list[list[dict]]:
    return toy_conversations(n)


def test_pretraining_corpus_comes_from_the_hook_or_the_tasks_traffic():
    captured = toy_conversations(3, first_order=99001)
    hook = bm.pretraining_corpus("continuum_pipeline_tests.test_training:toy_corpus", 5, lambda: pytest.fail("read"))
    assert hook == (toy_conversations(5), VOCAB)
    assert bm.pretraining_corpus("continuum_pipeline_tests.test_training:toy_corpus_list", 4,
                                 lambda: captured) == (toy_conversations(4), [])
    assert bm.pretraining_corpus(None, 600, lambda: captured) == (captured, [])
    with pytest.raises(ValueError, match="no captured interactions yet"):
        bm.pretraining_corpus(None, 600, lambda: [])
    with pytest.raises(ValueError, match="pretraining_corpus: cannot import"):
        bm.pretraining_corpus("continuum_pipeline_tests.test_training:no_such_corpus", 5, lambda: captured)


def test_check_pretrained_loads_a_local_model_and_wants_a_chat_template(base_dir, tmp_path):
    import shutil

    info = bm.check_pretrained(str(base_dir))
    assert info["model_type"] == "llama" and info["architecture"] == "LlamaForCausalLM" and info["vocabulary"] > 0
    with pytest.raises(ValueError, match="cannot load it with from_pretrained"):
        bm.check_pretrained(str(tmp_path / "nothing-here"))
    bare = shutil.copytree(base_dir, tmp_path / "no-template")
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((bare / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has no chat template"):
        bm.check_pretrained(str(bare))


def test_lora_targets_every_linear_layer_but_the_output_head_by_default(sft_run):
    config, result, _ = sft_run
    assert config.target_modules == "all-linear"
    adapter = json.loads((Path(result.adapter_dir) / "adapter_config.json").read_text())
    targets = adapter["target_modules"]  # PEFT saves what all-linear resolved to: every layer's modules
    assert {t.split(".")[-1] for t in targets} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj"}
    assert len(set(targets)) == 7 * TINY.layers and not any("lm_head" in t for t in targets)
