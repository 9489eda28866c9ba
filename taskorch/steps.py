"""The step machine: what happens when an orchestration's step or condition check ends.

Filled in by the orchestrations work; for now a worker has no non-task jobs to run.
"""

from __future__ import annotations

from typing import Any

from taskorch.store import Store


def handlers(store: Store, session: Any) -> dict[str, Any]:
    return {}
