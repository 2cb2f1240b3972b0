"""The client side of tests against :class:`fakes.openai_server.FakeOpenAIServer`: a fake key in
the environment and an ``openai:`` backend pointed at the server, failing fast."""

from __future__ import annotations

from typing import Any

import pytest

from debatelab.llm.openai_compat import OpenAICompatLLM, load_openai
from debatelab.llm.options import BackendOptions

from .openai_server import FakeOpenAIServer

KEY = "sk-test-not-a-real-key-1234"


@pytest.fixture(autouse=True)
def fake_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """Import it into a test module (``from fakes.openai_client import fake_key``) to apply it there."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def make_llm(server: FakeOpenAIServer, **options: Any) -> OpenAICompatLLM:
    options = {"base_url": server.url, "timeout": 5.0, "max_retries": 0, **options}
    return load_openai("fake-model", BackendOptions(**options))
