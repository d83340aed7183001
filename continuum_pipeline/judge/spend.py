"""What a judge spends: requests, tokens and dollars from each response's `usage`, against a per-run budget."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from typing import Any

from continuum_pipeline.judge.base import BudgetExhausted


@dataclass(frozen=True)
class Prices:
    input_per_1m_tokens: float = 0.0
    output_per_1m_tokens: float = 0.0

    def __post_init__(self) -> None:
        for name in ("input_per_1m_tokens", "output_per_1m_tokens"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                    and value >= 0):
                raise ValueError(f"prices.{name}: expected dollars >= 0, got {value!r}")


def usd(amount: float) -> str:
    return f"${amount:.6f}".rstrip("0").rstrip(".") if amount else "$0"


class SpendMeter:
    """Thread-safe counters for one judge. The budget is checked before each request starts: requests
    already in flight when it is reached still finish (and are paid for), so a run can overshoot by at
    most `max_concurrency` requests."""

    def __init__(self, prices: Prices | None = None, budget_usd: float | None = None):
        if budget_usd is not None and not (isinstance(budget_usd, int | float) and budget_usd >= 0):
            raise ValueError(f"cost_budget_usd: expected dollars >= 0 or None (unlimited), got {budget_usd!r}")
        self.prices, self.budget_usd = prices or Prices(), budget_usd
        self._lock = threading.Lock()
        self.requests = self.input_tokens = self.output_tokens = self.cache_hits = 0
        self.spent_usd = 0.0

    @property
    def exhausted(self) -> bool:
        return self.budget_usd is not None and self.spent_usd >= self.budget_usd

    def check(self, who: str) -> None:
        """Raise BudgetExhausted instead of starting a request the budget no longer covers."""
        if self.exhausted:
            raise BudgetExhausted(f"{who}: cost budget of {usd(self.budget_usd or 0)} reached after "
                                  f"{usd(self.spent_usd)} spent; the rest are labelled next run")

    def request_started(self) -> None:
        with self._lock:
            self.requests += 1

    def cache_hit(self) -> None:
        with self._lock:
            self.cache_hits += 1

    def record(self, usage: Any) -> None:
        """Add one response's `usage` (an SDK object or its JSON dict; embeddings have no completion tokens)."""
        if usage is None:
            return
        get = usage.get if isinstance(usage, dict) else (lambda key: getattr(usage, key, None))
        prompt, completion = int(get("prompt_tokens") or 0), int(get("completion_tokens") or 0)
        cost = (prompt * self.prices.input_per_1m_tokens + completion * self.prices.output_per_1m_tokens) / 1e6
        with self._lock:
            self.input_tokens += prompt
            self.output_tokens += completion
            self.spent_usd += cost

    def httpx_hooks(self, *, asynchronous: bool, read_usage: bool = True) -> dict[str, list]:
        """Event hooks for an httpx client: count every request sent (retries included) and, with
        `read_usage`, read the usage of every JSON response, for SDKs whose completions we never see
        (ragas calls through instructor). A caller that sees its completions records their usage itself."""

        def on_request(request: Any) -> None:
            self.request_started()

        def read_body_usage(body: bytes) -> None:
            try:
                payload = json.loads(body)
            except ValueError:
                return
            if isinstance(payload, dict):
                self.record(payload.get("usage"))

        if asynchronous:
            async def on_request_async(request: Any) -> None:
                on_request(request)

            async def on_response_async(response: Any) -> None:
                if response.headers.get("content-type", "").startswith("application/json"):
                    read_body_usage(await response.aread())

            return {"request": [on_request_async], "response": [on_response_async] if read_usage else []}

        def on_response(response: Any) -> None:
            if response.headers.get("content-type", "").startswith("application/json"):
                read_body_usage(response.read())

        return {"request": [on_request], "response": [on_response] if read_usage else []}


class Metered:
    """What a model-based judge reports from its `meter` (a SpendMeter): the labelling loop reads these."""

    meter: SpendMeter

    @property
    def spent_usd(self) -> float:
        return self.meter.spent_usd

    @property
    def requests(self) -> int:
        """HTTP requests sent, the SDK's retries included."""
        return self.meter.requests

    @property
    def cache_hits(self) -> int:
        return self.meter.cache_hits

    @property
    def budget_exhausted(self) -> bool:
        return self.meter.exhausted
