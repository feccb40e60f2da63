from agentkit.memory import InMemoryMemory, MemoryItem, score


def test_score_counts_shared_words() -> None:
    assert score("cats and dogs", MemoryItem("Cats sleep a lot", ("pets",))) == 1
    assert score("pets", MemoryItem("Cats sleep a lot", ("pets",))) == 1


def test_search_ranks_by_overlap() -> None:
    memory = InMemoryMemory()
    memory.remember(MemoryItem("Paris is the capital of France", ("geography",)))
    memory.remember(MemoryItem("The capital of Italy is Rome", ("geography",)))
    found = memory.search("capital of France")
    assert [item.text for item in found][0] == "Paris is the capital of France"


def test_search_without_match_is_empty() -> None:
    memory = InMemoryMemory()
    memory.remember(MemoryItem("Water boils at 100 degrees"))
    assert memory.search("quantum") == []
