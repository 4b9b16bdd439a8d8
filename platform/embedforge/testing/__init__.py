"""Test doubles that behave like the real services embedforge talks to.

:mod:`embedforge.testing.fake_llm` is a real OpenAI-compatible HTTP server (aiohttp) with
configurable latency and fault injection, so the LLM synthesis client can be tested and
benchmarked over real sockets without a paid API.

Names are resolved lazily (PEP 562) so ``python -m embedforge.testing.fake_llm`` does not
import the module twice (runpy warns when a package pre-imports the module it runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedforge.testing.fake_llm import FakeLLMServer, FaultPlan, max_in_window

__all__ = ["FakeLLMServer", "FaultPlan", "max_in_window"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from embedforge.testing import fake_llm

        return getattr(fake_llm, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
