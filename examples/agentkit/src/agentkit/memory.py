"""Memory providers: remember facts, search them by words."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class MemoryItem:
    text: str
    tags: tuple[str, ...] = field(default_factory=tuple)


def _words(text: str) -> set[str]:
    return {w.strip(".,!?").lower() for w in text.split() if w.strip(".,!?")}


def score(query: str, item: MemoryItem) -> int:
    """How many query words the item shares (text and tags)."""
    return len(_words(query) & (_words(item.text) | {t.lower() for t in item.tags}))


class Memory(Protocol):
    def remember(self, item: MemoryItem) -> None: ...

    def search(self, query: str, limit: int = 10) -> list[MemoryItem]: ...


class InMemoryMemory:
    def __init__(self) -> None:
        self._items: list[MemoryItem] = []

    def remember(self, item: MemoryItem) -> None:
        self._items.append(item)

    def search(self, query: str, limit: int = 10) -> list[MemoryItem]:
        ranked = sorted(self._items, key=lambda item: score(query, item), reverse=True)
        return [item for item in ranked if score(query, item) > 0][:limit]


class Neo4jMemory:
    """Memory stored as (:Memory {text})-[:TAGGED]->(:Tag {name}) in Neo4j."""

    def __init__(self, driver: Any, database: str = "neo4j") -> None:
        self._driver = driver
        self._database = database

    def remember(self, item: MemoryItem) -> None:
        self._driver.execute_query(
            "CREATE (m:Memory {text: $text}) "
            "WITH m UNWIND $tags AS tag "
            "MERGE (t:Tag {name: tag}) MERGE (m)-[:TAGGED]->(t)",
            text=item.text,
            tags=list(item.tags),
            database_=self._database,
        )

    def search(self, query: str, limit: int = 10) -> list[MemoryItem]:
        records, _, _ = self._driver.execute_query(
            "MATCH (m:Memory) OPTIONAL MATCH (m)-[:TAGGED]->(t:Tag) "
            "RETURN m.text AS text, collect(t.name) AS tags",
            database_=self._database,
        )
        items = [MemoryItem(r["text"], tuple(sorted(r["tags"]))) for r in records]
        ranked = sorted(items, key=lambda item: score(query, item), reverse=True)
        return [item for item in ranked if score(query, item) > 0][:limit]

    def clear(self) -> None:
        self._driver.execute_query("MATCH (n) DETACH DELETE n", database_=self._database)
