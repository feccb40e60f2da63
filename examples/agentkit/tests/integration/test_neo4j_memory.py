from typing import Any

import pytest

from agentkit import Agent
from agentkit.memory import MemoryItem, Neo4jMemory

pytestmark = pytest.mark.neo4j


def test_remember_and_search(neo4j_driver: Any) -> None:
    memory = Neo4jMemory(neo4j_driver)
    memory.remember(MemoryItem("Cats sleep sixteen hours a day", ("cats", "sleep")))
    memory.remember(MemoryItem("Dogs like walks", ("dogs",)))
    found = memory.search("how long do cats sleep")
    assert found[0].text == "Cats sleep sixteen hours a day"
    assert found[0].tags == ("cats", "sleep")


def test_tags_are_shared_nodes(neo4j_driver: Any) -> None:
    memory = Neo4jMemory(neo4j_driver)
    memory.remember(MemoryItem("Paris is in France", ("geo",)))
    memory.remember(MemoryItem("Rome is in Italy", ("geo",)))
    records, _, _ = neo4j_driver.execute_query(
        "MATCH (t:Tag {name: 'geo'})<-[:TAGGED]-(m) "
        "RETURN count(DISTINCT t) AS tags, count(m) AS mems",
        database_="neo4j",
    )
    assert (records[0]["tags"], records[0]["mems"]) == (1, 2)


def test_agent_uses_graph_memory(neo4j_driver: Any) -> None:
    agent = Agent(memory=Neo4jMemory(neo4j_driver))
    agent.learn("The deploy window is Friday", "deploy")
    assert agent.process("when is the deploy window").source == "memory"
