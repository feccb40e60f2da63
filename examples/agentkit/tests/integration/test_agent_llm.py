import os

import pytest

from agentkit import Agent
from agentkit.llm import ChatClient

pytestmark = pytest.mark.llm


@pytest.fixture
def client() -> ChatClient:
    if not os.environ.get("OPENAI_BASE_URL"):
        pytest.skip("OPENAI_BASE_URL is not set: no LLM endpoint")
    return ChatClient()


def test_llm_answers_open_question(client: ChatClient) -> None:
    reply = Agent(llm=client).process("Who wrote Hamlet?")
    assert reply.source == "llm"
    assert reply.text


def test_completion_reports_usage(client: ChatClient) -> None:
    completion = client.complete("Say hello")
    assert completion.prompt_tokens > 0
    assert completion.completion_tokens > 0
