from agentkit import Agent


def test_arithmetic_uses_calculator() -> None:
    reply = Agent().process("What is 2+2?")
    assert (reply.text, reply.source) == ("4", "calculator")


def test_answers_from_memory() -> None:
    agent = Agent()
    agent.learn("The meeting is on Tuesday", "calendar")
    assert agent.process("when is the meeting").source == "memory"


def test_unknown_without_llm() -> None:
    assert Agent().process("Who wrote Hamlet?").text == "I don't know."
