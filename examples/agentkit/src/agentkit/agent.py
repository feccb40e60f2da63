"""The agent loop: answer from tools, then memory, then the LLM."""

from __future__ import annotations

import re
from dataclasses import dataclass

from agentkit.llm import ChatClient
from agentkit.memory import InMemoryMemory, Memory, MemoryItem
from agentkit.tools import Calculator

_ARITHMETIC = re.compile(r"what is ([0-9+\-*/(). ]+)\??$", re.IGNORECASE)


@dataclass(frozen=True)
class AgentReply:
    text: str
    source: str


class Agent:
    def __init__(self, memory: Memory | None = None, llm: ChatClient | None = None) -> None:
        self.memory: Memory = memory if memory is not None else InMemoryMemory()
        self.llm = llm
        self.calculator = Calculator()

    def learn(self, fact: str, *tags: str) -> None:
        self.memory.remember(MemoryItem(fact, tuple(tags)))

    def process(self, query: str) -> AgentReply:
        match = _ARITHMETIC.match(query.strip())
        if match:
            value = self.calculator.run(match.group(1))
            text = str(int(value)) if value.is_integer() else f"{value:.4g}"
            return AgentReply(text, "calculator")
        found = self.memory.search(query, limit=1)
        if found:
            return AgentReply(found[0].text, "memory")
        if self.llm is not None:
            return AgentReply(self.llm.complete(query).text, "llm")
        return AgentReply("I don't know.", "none")
