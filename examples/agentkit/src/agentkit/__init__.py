"""agentkit: an agent loop with tools and memory."""

from agentkit.agent import Agent, AgentReply
from agentkit.memory import InMemoryMemory, MemoryItem
from agentkit.tools import Calculator

__all__ = ["Agent", "AgentReply", "Calculator", "InMemoryMemory", "MemoryItem"]
