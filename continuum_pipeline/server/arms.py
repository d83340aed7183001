"""The gateway's arms: which upstreams serve each task, and with what weight. ONE file, re-read when it changes.

The rollout drives the weights by rewriting this file (write a temp file, then rename it over the old one:
`write()`); the gateway notices the new mtime/size/inode on the next request and routes by the new weights at
once. The file is the state: a restarted gateway routes by the weights last written. Default path
`$CONTINUUM_HOME/gateway/arms.json`, or `CONTINUUM_GATEWAY_ARMS`. JSON, or YAML when the name ends in .yaml/.yml:

    {
      "default_task": "support_answer",            # used when a request names no task (optional)
      "tasks": {
        "support_answer": {
          "sticky": "user",                        # user | session | none (default none: a fresh draw per call)
          "arms": [
            {"name": "stable", "base_url": "http://127.0.0.1:4318/local/champion/v1", "model_version": "2",
             "weight": 0.95},
            {"name": "challenger", "base_url": "http://127.0.0.1:4318/local/challenger/v1", "model_version": "3",
             "weight": 0.05},
            {"name": "teacher", "base_url": "https://api.openai.com/v1", "model": "gpt-4o-mini",
             "api_key_env": "OPENAI_API_KEY", "weight": 0,
             "price": {"prompt_per_1m": 0.15, "completion_per_1m": 0.6}}
          ],
          "shadow": {"arm": "challenger", "sample_rate": 0.1}  # optional, see below
        }
      }
    }

Per arm: `name` is what the interaction's `route` records; `model` (optional) replaces the request's model
upstream; `model_version` (optional, the rollout writes it) is recorded as the interaction's `model_version`;
without it the gateway takes the version from the answer's `model` when that reads `NAME@VERSION` (what the
local model server answers with); `api_key_env` names the environment variable holding the upstream key (the
key itself never sits in this file, in captured records or in logs); weights are relative (they need not add
up to 1; 0 turns an arm off); `price` (optional, USD per million tokens) fills `cost_usd`. Sticky routing
hashes task + user (or session) id into [0, 1) and walks the cumulative weights: the same id keeps its arm
while the weights stay the same (across restarts too: the hash is not salted per process).

Per task, `shadow` (optional): after the user's answer is produced, a `sample_rate` share of the task's
requests is copied, in the background, to the arm named `arm` (any weight, 0 included; a request already
served by that arm is not copied). Its answer never reaches the user; it lands as its own interaction with
`route` = that arm and metadata `{"shadow": true, "shadow_of": <the served interaction id>}`, so the judges
score both and the rollout compares them. Streaming requests are copied as non-streaming ones. Optional
`timeout_s` (default 60) bounds a copy's time, `max_in_flight` (default 4) the copies under way at once; a copy
beyond it is dropped and counted (GET /healthz, `gateway.shadow`).

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
    model_version: str | None = None
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
class Shadow:
    """Copy a sampled share of the task's requests to `arm`, never serving its answer."""

    arm: Arm
    sample_rate: float
    timeout_s: float = 60.0
    max_in_flight: int = 4

    def sampled(self) -> bool:
        return random.random() < self.sample_rate


@dataclass(frozen=True)
class TaskArms:
    task: str
    arms: tuple[Arm, ...]
    sticky: str = "none"
    shadow: Shadow | None = None

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
            version = a.get("model_version")
            if version is not None and (isinstance(version, bool) or not isinstance(version, str | int)):
                raise ArmsError(f"task {task!r} arm {a['name']!r}: model_version must be a string like \"2\", "
                                f"got {version!r}")
            arms.append(Arm(
                name=str(a["name"]), base_url=str(a["base_url"]), model=a.get("model"),
                api_key_env=a.get("api_key_env"),
                weight=_number(a.get("weight", 1), f"task {task!r} arm {a['name']!r} weight"),
                model_version=None if version is None else str(version),
                prompt_per_1m=None if price.get("prompt_per_1m") is None else
                _number(price["prompt_per_1m"], "price.prompt_per_1m"),
                completion_per_1m=None if price.get("completion_per_1m") is None else
                _number(price["completion_per_1m"], "price.completion_per_1m"),
            ))
        if not any(a.weight > 0 for a in arms):
            raise ArmsError(f"task {task!r}: every arm has weight 0")
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ArmsError(f"task {task!r}: arm names must differ (the interaction's route tells them apart), "
                            f"got {names}")
        tasks[str(task)] = TaskArms(str(task), tuple(arms), sticky, _shadow(task, spec.get("shadow"), arms))
    default = data.get("default_task")
    if default is not None and default not in tasks:
        raise ArmsError(f"default_task {default!r} is not one of the tasks")
    return ArmsConfig(tasks, default)


def _shadow(task: str, spec: Any, arms: list[Arm]) -> Shadow | None:
    if spec is None:
        return None
    where = f"task {task!r} shadow"
    if not isinstance(spec, dict) or not spec.get("arm"):
        raise ArmsError(f"{where}: must be an object like {{\"arm\": \"challenger\", \"sample_rate\": 0.1}}")
    arm = next((a for a in arms if a.name == spec["arm"]), None)
    if arm is None:
        raise ArmsError(f"{where}: arm {spec['arm']!r} is not one of the task's arms ({', '.join(a.name for a in arms)})")
    rate = _number(spec.get("sample_rate", 0), f"{where} sample_rate")
    if rate > 1:
        raise ArmsError(f"{where}: sample_rate is a share of requests in [0, 1], got {rate}")
    timeout = _number(spec.get("timeout_s", 60.0), f"{where} timeout_s")
    in_flight = spec.get("max_in_flight", 4)
    if isinstance(in_flight, bool) or not isinstance(in_flight, int) or in_flight < 1:
        raise ArmsError(f"{where}: max_in_flight must be an integer ≥ 1, got {in_flight!r}")
    if timeout <= 0:
        raise ArmsError(f"{where}: timeout_s must be > 0 seconds, got {timeout}")
    return Shadow(arm, rate, timeout, in_flight)


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
