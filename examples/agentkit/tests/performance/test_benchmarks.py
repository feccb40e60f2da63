from typing import Any

from agentkit import Agent
from agentkit.memory import InMemoryMemory, MemoryItem


def _memory(size: int) -> InMemoryMemory:
    memory = InMemoryMemory()
    for i in range(size):
        memory.remember(MemoryItem(f"fact number {i} about topic {i % 17}", (f"t{i % 5}",)))
    return memory


def test_simple_query_latency(benchmark: Any) -> None:
    agent = Agent()
    reply = benchmark(agent.process, "What is (17 * 23) + 4?")
    assert reply.text == "395"


def test_memory_search_latency(benchmark: Any) -> None:
    memory = _memory(400)
    found = benchmark(memory.search, "topic 3", 10)
    assert found
