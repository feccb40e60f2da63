import os
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def neo4j_driver() -> Iterator[Any]:
    uri = os.environ.get("NEO4J_TEST_URI") or os.environ.get("NEO4J_URI")
    if not uri:
        pytest.skip("NEO4J_URI is not set: no Neo4j service")
    from neo4j import GraphDatabase

    user = os.environ.get("NEO4J_USER", "neo4j")
    password = os.environ.get("NEO4J_TEST_PASSWORD") or os.environ.get("NEO4J_PASSWORD", "")
    driver = GraphDatabase.driver(uri, auth=(user, password))
    driver.verify_connectivity()
    driver.execute_query("MATCH (n) DETACH DELETE n", database_="neo4j")
    yield driver
    driver.close()
