"""Discover the SQL models and their dependencies.

Files are Jinja templates (jinja2 rather than a hand-written regex, so users get real Jinja);
`{{ ref('name') }}` names another model and `{{ source('lake', 'table') }}` a lake table.
Dependencies come from rendering each file once with recording functions.

Models under `task/` are *task models*: every task (FlywheelComponent instance) runs its own copy over its own
interactions. They may also use `{{ source('task', 'reward_labels') }}` (the task's own lake tables),
`{{ source('config', 'judge_weights') }}` (tables built from the task's YAML), `{{ task_filter('i') }}` (the
task's interaction selection as a SQL condition) and `{{ var('reward.weights.judges') }}` (a YAML value as a
SQL literal); their `ref()`s resolve to the task's own models first, then to the shared ones.
"""

from __future__ import annotations

import graphlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

SOURCE_SCHEMAS = {"lake"}
TASK_SOURCE_SCHEMAS = {"lake", "task", "config"}
TASK_FOLDER = "task"
_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


class SqlProjectError(ValueError):
    """The SQL project is inconsistent; the message names the file and the fix."""


@dataclass(frozen=True)
class SqlModel:
    name: str
    path: Path
    template: str
    refs: tuple[str, ...]
    sources: tuple[tuple[str, str], ...]
    description: str
    folder: str = ""

    def render(self, **variables) -> str:
        """SQL for DuckDB: refs become models' views, sources become `<schema>.<table>` views; `variables` are
        the task models' Jinja globals (`task_filter`, `var`)."""
        return _env().from_string(self.template).render(
            ref=lambda name: f'"{name}"', source=lambda schema, table: f'"{schema}"."{table}"', **variables
        )


@dataclass
class SqlProject:
    root: Path
    models: dict[str, SqlModel] = field(default_factory=dict)

    shared: SqlProject | None = None  # for a task project: the shared models its refs may name

    @classmethod
    def load(cls, root: Path) -> SqlProject:
        """The shared models: every .sql file except those under task/."""
        return cls._load(Path(root), task=False)

    @classmethod
    def load_task_models(cls, root: Path) -> SqlProject:
        """The task models under `<root>/task/`, run once per task; refs may also name shared models."""
        project = cls._load(Path(root) / TASK_FOLDER, task=True, shared=cls.load(root))
        return project

    @classmethod
    def _load(cls, root: Path, task: bool, shared: SqlProject | None = None) -> SqlProject:
        if not root.is_dir():
            if task:
                return cls(root, shared=shared)
            raise SqlProjectError(f"SQL model folder {root} does not exist; set CONTINUUM_SQL_DIR or create it")
        project = cls(root, shared=shared)
        for path in sorted(root.rglob("*.sql")):
            if not task and path.relative_to(root).parts[0] == TASK_FOLDER:
                continue
            model = _parse(path, root, task)
            if model.name in project.models:
                raise SqlProjectError(f"two SQL models are named {model.name!r}: {project.models[model.name].path} "
                                      f"and {path}; rename one file")
            project.models[model.name] = model
        for model in project.models.values():
            for ref in model.refs:
                if ref not in project.models and not (shared and ref in shared.models):
                    raise SqlProjectError(f"{model.path}: ref('{ref}') names no model; add {root}/{ref}.sql "
                                          "or fix the name")
        project.order()  # fail early on cycles
        return project

    def order(self) -> list[str]:
        """Model names so that every model comes after the models it refs."""
        sorter = graphlib.TopologicalSorter({m.name: {r for r in m.refs if r in self.models}
                                             for m in self.models.values()})
        try:
            return list(sorter.static_order())
        except graphlib.CycleError as exc:
            raise SqlProjectError(f"SQL models ref each other in a cycle: {' -> '.join(exc.args[1])}") from None

    def sources(self) -> set[tuple[str, str]]:
        return {s for m in self.models.values() for s in m.sources}


def _env() -> jinja2.Environment:
    return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)


def _parse(path: Path, root: Path, task: bool = False) -> SqlModel:
    name = path.stem
    if not _NAME.match(name):
        raise SqlProjectError(f"{path}: model names are lower_snake_case (they become table names); rename the file")
    template = path.read_text(encoding="utf-8")
    refs: list[str] = []
    sources: list[tuple[str, str]] = []

    def ref(target: str) -> str:
        refs.append(target)
        return f'"{target}"'

    def source(schema: str, table: str) -> str:
        if schema not in (TASK_SOURCE_SCHEMAS if task else SOURCE_SCHEMAS):
            allowed = "'lake', 'task' or 'config'" if task else "'lake' (task models under task/ also have 'task' and 'config')"
            raise SqlProjectError(f"{path}: source('{schema}', '{table}'): the only source schema is {allowed}")
        sources.append((schema, table))
        return f'"{schema}"."{table}"'

    # Task models' globals render to placeholders here: parsing only records refs and sources.
    variables = {"task_filter": lambda alias="": "true", "var": lambda name: "null"} if task else {}
    try:
        _env().from_string(template).render(ref=ref, source=source, **variables)
    except jinja2.TemplateError as exc:
        raise SqlProjectError(f"{path}: template error: {exc}") from None
    comments = []
    for line in template.splitlines():
        if not line.startswith("--"):
            break
        comments.append(line.removeprefix("--").strip())
    return SqlModel(name, path, template, tuple(dict.fromkeys(refs)), tuple(dict.fromkeys(sources)),
                    " ".join(comments).strip(), path.parent.relative_to(root).as_posix())
