"""Which interactions may become data: consent, exclusion rules and sampling, each one counted.

Rules come from the task's `privacy.exclude` and from one shared rules file for every task
(`CONTINUUM_PRIVACY_RULES`: a YAML list of the same rules, each with an optional `task` it is limited to).
A rule is a DuckDB condition over the lake's `interactions` table (users, sessions, metadata fields, a
`where` predicate; all must hold). It is evaluated once per materialization over the whole table, so the
same interactions are out of the SFT dataset, the production golden sets and (with
`keep_excluded_for_monitoring: false`) the task's SQL models. Sampling keeps an interaction when a hash of
its id falls under the task's rate: the same interaction is kept or dropped in every dataset version.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, ValidationError

from continuum_pipeline.config_errors import format_validation_error
from continuum_pipeline.task.config import (
    ExclusionRule,
    TaskConfig,
    field_sql,
    metadata_equals_sql,
    sql_literal,
)

RULES_ENV = "CONTINUUM_PRIVACY_RULES"


class PrivacyRuleError(ValueError):
    """An exclusion rule cannot run; the message names the rule, where it is written, and the fix."""


class SharedExclusionRule(ExclusionRule):
    """A rule of the shared rules file: the same fields, plus the task it is limited to (none: every task)."""

    task: str | None = Field(None, description="Only this task's datasets; absent: every task.")


@dataclass(frozen=True)
class NamedRule:
    rule: ExclusionRule
    where: str  # where it is written: `privacy.exclude[0]` or `<file>[2]`, for error messages

    @property
    def name(self) -> str:
        return self.rule.name


def shared_rules(path: str | Path | None = None) -> list[tuple[SharedExclusionRule, str]]:
    """The shared rules file (default: $CONTINUUM_PRIVACY_RULES; none set: no shared rules)."""
    import yaml

    path = path if path is not None else os.environ.get(RULES_ENV)
    if not path:
        return []
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise PrivacyRuleError(f"{RULES_ENV}={path}: cannot read the shared privacy rules: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, list):
        raise PrivacyRuleError(f"{path}: expected a YAML list of rules ({{name, users, sessions, metadata, where, "
                               f"task}}), got {type(data).__name__}")
    rules = []
    for i, item in enumerate(data):
        try:
            rules.append((SharedExclusionRule.model_validate(item), f"{path}[{i}]"))
        except ValidationError as exc:
            detail = "; ".join(format_validation_error(exc).splitlines())
            raise PrivacyRuleError(f"{path}[{i}]: {detail}") from None
    return rules


def rules_for(task: TaskConfig, shared_path: str | Path | None = None) -> list[NamedRule]:
    """The task's own rules, then the shared ones that apply to it; names are unique (each counts its removals)."""
    rules = [NamedRule(r, f"privacy.exclude[{i}]") for i, r in enumerate(task.privacy.exclude)]
    rules += [NamedRule(r, where) for r, where in shared_rules(shared_path) if r.task in (None, task.name)]
    seen: dict[str, str] = {}
    for r in rules:
        if r.name in seen:
            raise PrivacyRuleError(f"{r.where}: rule name {r.name!r} is also used by {seen[r.name]}; rename one "
                                   "(each rule counts its own removals)")
        seen[r.name] = r.where
    return rules


def rule_sql(rule: ExclusionRule, alias: str = "") -> str:
    """The rule as a DuckDB condition that is never NULL (a missing user id is no match, not an unknown)."""
    conditions = []
    if rule.users:
        conditions.append(f"{field_sql('user_id', alias)} in ({', '.join(map(sql_literal, rule.users))})")
    if rule.sessions:
        conditions.append(f"{field_sql('session_id', alias)} in ({', '.join(map(sql_literal, rule.sessions))})")
    conditions += [metadata_equals_sql(k, v, alias) for k, v in rule.metadata.items()]
    if rule.where:
        conditions.append(f"({rule.where})")
    return f"coalesce({' and '.join(f'({c})' for c in conditions)}, false)"


def _interactions_schema() -> pa.Schema:
    from continuum_pipeline.lake.schemas import INTERACTIONS

    return INTERACTIONS


def check_rules(rules: Sequence[NamedRule], schema: pa.Schema | None = None) -> None:
    """Run every rule against an empty `interactions` table of the lake's schema: a typo, an unknown column,
    a non-boolean expression or a second statement fails here, naming the rule, not halfway through a run."""
    import duckdb

    schema = schema or _interactions_schema()
    con = duckdb.connect()
    con.register("interactions", schema.empty_table())
    fix = f"fix `where`: one DuckDB boolean expression over the interactions columns ({', '.join(schema.names)})"
    for r in rules:
        if not r.rule.where:
            continue
        query = f"select ({r.rule.where}) as excluded from interactions"
        try:
            statements = con.extract_statements(query)
            if len(statements) != 1:
                raise PrivacyRuleError(f"{r.where} ({r.name}): where: {r.rule.where!r} is more than one "
                                       f"expression; {fix}")
            kind = con.execute(f"describe {query}").fetchall()[0][1]
            if kind not in ("BOOLEAN", '"NULL"', "NULL"):
                raise PrivacyRuleError(f"{r.where} ({r.name}): where: {r.rule.where!r} is a {kind}, not a "
                                       f"condition; {fix}")
            con.execute(f"select count(*) from interactions where {rule_sql(r.rule)}").fetchall()
        except duckdb.Error as exc:
            message = str(exc).splitlines()[0]
            raise PrivacyRuleError(f"{r.where} ({r.name}): where: {r.rule.where!r} does not run in DuckDB "
                                   f"({message}); {fix}") from None


def excluded_ids(lake, rules: Sequence[NamedRule], selection: str = "true") -> OrderedDict[str, frozenset[str]]:
    """Per rule, the ids of the lake's interactions (those `selection` keeps: the task's) it matches; the rules
    are checked first, so a bad one fails by name."""
    import duckdb

    result: OrderedDict[str, frozenset[str]] = OrderedDict()
    if not rules:
        return result
    check_rules(rules)
    if not lake.table_exists("interactions"):
        return OrderedDict((r.name, frozenset()) for r in rules)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    lake.register_duckdb(con, "interactions", "interactions")
    for r in rules:
        try:
            rows = con.execute(f"select distinct interaction_id from interactions where ({selection}) and "
                               f"{rule_sql(r.rule)}").fetchall()
        except duckdb.Error as exc:  # a runtime error on some row's data (a cast in the predicate)
            raise PrivacyRuleError(f"{r.where} ({r.name}): where: {r.rule.where!r} failed on the lake's "
                                   f"interactions ({str(exc).splitlines()[0]}); use try_cast / null-safe "
                                   "functions so every row evaluates") from None
        result[r.name] = frozenset(i for (i,) in rows if i is not None)
    return result


def sample_keeps(interaction_id: str, rate: float) -> bool:
    """True when the interaction is in the task's sample: sha256 of the id mapped to [0, 1) is below the rate
    (salted so the sample is independent of the content-hash train/validation split)."""
    if rate >= 1:
        return True
    bucket = int(hashlib.sha256(f"continuum.sample:{interaction_id}".encode()).hexdigest()[:15], 16) / 16 ** 15
    return bucket < rate


@dataclass(frozen=True)
class PrivacyPolicy:
    """Consent, exclusion rules and sampling: what may become training or production golden data."""

    consent: tuple[str, ...] = ("granted",)  # consent values that may be used; "denied" never is, even if listed
    excluded: Mapping[str, frozenset[str]] = field(default_factory=dict)  # rule name → interaction ids
    sampling_rate: float = 1.0

    def apply(self, table: pa.Table, removed: OrderedDict[str, int]) -> pa.Table:
        """`table` (with `interaction_id` and `consent`) less what the policy keeps out; each filter's removals
        go to `removed` in order: consent, one entry per rule (`excluded: <rule>`), then sampling (if < 1)."""

        def keep(name: str, mask) -> None:
            nonlocal table
            before = table.num_rows
            table = table.filter(pc.fill_null(mask, False))
            removed[name] = before - table.num_rows

        keep("consent denied", pc.not_equal(table["consent"], "denied"))
        allowed = pa.array(sorted(set(self.consent) - {"denied"}), pa.string())
        keep("consent unknown" if "unknown" not in self.consent else "consent not allowed",
             pc.is_in(table["consent"], allowed))
        for name, ids in self.excluded.items():
            keep(f"excluded: {name}", pc.invert(pc.is_in(table["interaction_id"], pa.array(sorted(ids), pa.string()))))
        if self.sampling_rate < 1:
            keep(f"sampling (rate {self.sampling_rate:g})",
                 pa.array([sample_keeps(i, self.sampling_rate) for i in table["interaction_id"].to_pylist()]))
        return table


def privacy_policy(lake, task: TaskConfig) -> PrivacyPolicy:
    """The task's policy with its rules evaluated over the lake now."""
    return PrivacyPolicy(consent=tuple(task.curation.consent),
                         excluded=excluded_ids(lake, rules_for(task), task.selection_sql()),
                         sampling_rate=task.privacy.sampling_rate)


def monitoring_exclusions(lake, task: TaskConfig) -> pa.Table:
    """The interaction ids the task's SQL models leave out: every rule's matches when
    `keep_excluded_for_monitoring` is false, none otherwise (consent and sampling never hide monitoring)."""
    ids: set[str] = set()
    if not task.privacy.keep_excluded_for_monitoring:
        rules = rules_for(task)
        if rules and lake is None:
            raise PrivacyRuleError(f"{task.name}: privacy.keep_excluded_for_monitoring is false, so the SQL models "
                                   "need the lake to evaluate the exclusion rules; pass it to task_binding")
        for matched in excluded_ids(lake, rules, task.selection_sql()).values():
            ids |= matched
    return pa.table({"interaction_id": pa.array(sorted(ids), pa.string())})


def privacy_removals(removed: Mapping[str, int]) -> list[tuple[str, int]]:
    """The privacy filters' entries (consent, rules, sampling) of a removals mapping, in filter order."""
    return [(k, v) for k, v in removed.items() if k.startswith(("consent ", "excluded: ", "sampling "))]
