"""The gateway's arms: which upstreams serve each task, and with what weight. ONE file, re-read when it changes.

The rollout drives the weights by rewriting this file (write a temp file, then rename it over the old one);
the gateway notices the new mtime/size/inode on the next request and routes by the new weights at once.
Default path `$CONTINUUM_HOME/gateway/arms.json`, or `CONTINUUM_GATEWAY_ARMS`. JSON, or YAML when the name
ends in .yaml/.yml:

    {
      "default_task": "support_answer",            # used when a request names no task (optional)
      "tasks": {
        "support_answer": {
          "sticky": "user",                        # user | session | none (default none: a fresh draw per call)
          "arms": [
            {"name": "teacher", "base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini",
             "api_key_env": "OPENAI_API_KEY", "weight": 90,
             "price": {"prompt_per_1m": 0.15, "completion_per_1m": 0.6}},
            {"name": "student", "base_url": "http://127.0.0.1:4318/local/v1", "model": "champion", "weight": 10}
          ]
        }
      }
    }

`name` is what the interaction's `route` records; `model` (optional) replaces the request's model upstream;
`api_key_env` names the environment variable holding the upstream key (the key itself never sits in this file,
in captured records or in logs); weights are relative (they need not add up to 1; 0 turns an arm off);
`price` (optional, USD per million tokens) fills `cost_usd`. Sticky routing hashes task + user (or session)
id into [0, 1) and walks the cumulative weights: the same id keeps its arm while the weights stay the same.
An invalid file keeps the last good one in force (logged once per change).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("continuum.gateway")

STICKY = ("user", "session", "none")


class ArmsError(ValueError):
    pass


@dataclass(frozen=True)
class Arm:
    name: str
    base_url: str
    model: str | None = None
    api_key_env: str | None = None
    weight: float = 1.0
    prompt_per_1m: float | None = None
    completion_per_1m: float | None = None

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"

    @property
    def public_url(self) -> str:
        """The base URL without user:password@ or a query (where keys sometimes hide): what records may keep."""
        parts = urlsplit(self.base_url)
        return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", "")) if parts.port is None else \
            urlunsplit((parts.scheme, f"{parts.hostname}:{parts.port}", parts.path, "", ""))

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def cost(self, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
        if self.prompt_per_1m is None and self.completion_per_1m is None:
            return None
        if prompt_tokens is None and completion_tokens is None:
            return None
        return ((prompt_tokens or 0) * (self.prompt_per_1m or 0.0)
                + (completion_tokens or 0) * (self.completion_per_1m or 0.0)) / 1e6


@dataclass(frozen=True)
class TaskArms:
    task: str
    arms: tuple[Arm, ...]
    sticky: str = "none"

    def __post_init__(self) -> None:
        total = sum(a.weight for a in self.arms)
        object.__setattr__(self, "_total", total)

    def pick(self, user_id: str | None = None, session_id: str | None = None) -> Arm:
        """The arm for this call: by hash of the sticky id when there is one, else a random draw."""
        key = user_id if self.sticky == "user" else session_id if self.sticky == "session" else None
        total: float = self._total  # type: ignore[attr-defined]
        if key:
            digest = hashlib.blake2b(f"{self.task}\x00{key}".encode(), digest_size=8).digest()
            point = int.from_bytes(digest, "big") / 2**64 * total
        else:
            point = random.random() * total
        for arm in self.arms:
            if arm.weight > 0:
                if point < arm.weight:
                    return arm
                point -= arm.weight
        return next(a for a in reversed(self.arms) if a.weight > 0)


@dataclass(frozen=True)
class ArmsConfig:
    tasks: dict[str, TaskArms]
    default_task: str | None = None


EMPTY = ArmsConfig({}, None)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value < 0:
        raise ArmsError(f"{what} must be a number ≥ 0, got {value!r}")
    return float(value)


def parse(data: Any) -> ArmsConfig:
    if not isinstance(data, dict):
        raise ArmsError("the arms file must hold an object with \"tasks\"")
    tasks_in = data.get("tasks") or {}
    if not isinstance(tasks_in, dict):
        raise ArmsError("\"tasks\" must map task names to {sticky, arms}")
    tasks: dict[str, TaskArms] = {}
    for task, spec in tasks_in.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("arms"), list) or not spec["arms"]:
            raise ArmsError(f"task {task!r}: needs a non-empty \"arms\" list")
        sticky = spec.get("sticky") or "none"
        if sticky not in STICKY:
            raise ArmsError(f"task {task!r}: sticky must be one of {', '.join(STICKY)}, got {sticky!r}")
        arms = []
        for i, a in enumerate(spec["arms"]):
            if not isinstance(a, dict) or not a.get("name") or not a.get("base_url"):
                raise ArmsError(f"task {task!r} arm {i}: needs \"name\" and \"base_url\"")
            price = a.get("price") or {}
            arms.append(Arm(
                name=str(a["name"]), base_url=str(a["base_url"]), model=a.get("model"),
                api_key_env=a.get("api_key_env"),
                weight=_number(a.get("weight", 1), f"task {task!r} arm {a['name']!r} weight"),
                prompt_per_1m=None if price.get("prompt_per_1m") is None else
                _number(price["prompt_per_1m"], "price.prompt_per_1m"),
                completion_per_1m=None if price.get("completion_per_1m") is None else
                _number(price["completion_per_1m"], "price.completion_per_1m"),
            ))
        if not any(a.weight > 0 for a in arms):
            raise ArmsError(f"task {task!r}: every arm has weight 0")
        tasks[str(task)] = TaskArms(str(task), tuple(arms), sticky)
    default = data.get("default_task")
    if default is not None and default not in tasks:
        raise ArmsError(f"default_task {default!r} is not one of the tasks")
    return ArmsConfig(tasks, default)


def load(path: Path) -> ArmsConfig:
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        return parse(yaml.safe_load(text))
    return parse(json.loads(text))


def write(path: Path, data: dict[str, Any]) -> None:
    """Replace the arms file atomically (what the rollout calls): readers see the old or the new, never half."""
    parse(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


class ArmsState:
    """The arms in force, re-read when the file's (mtime, size, inode) changes; one stat() per call."""

    def __init__(self, path: Path | None):
        self.path = path
        self._stamp: tuple | None = None
        self._config = EMPTY
        self._bad_stamp: tuple | None = None

    def get(self) -> ArmsConfig:
        if self.path is None:
            return EMPTY
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._config = None, EMPTY
            return EMPTY
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp and stamp != self._bad_stamp:
            try:
                self._config = load(self.path)
                self._stamp = stamp
            except Exception as exc:  # noqa: BLE001 - JSON, YAML or shape errors: keep serving the last good one
                self._bad_stamp = stamp
                log.error("gateway arms file %s is invalid, keeping the last good one: %s", self.path, exc)
        return self._config
