"""The LLM gateway against a real fake upstream (an HTTP server on 127.0.0.1).

Token counts below are worked out by hand from the documented rules:
* gateway mock estimate: per message ceil(chars / 4) + 4; reply ceil(chars / 4);
* fake upstream (tasks/llm/fake_upstream.py): prompt = words of all messages + 7,
  completion = words of "Echo: <question>" + 3.
The test price table: test-model $1 in / $2 out, gpt-4o-mini $0.15 / $0.60 per 1M.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import (
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
)

from cicd.config import LlmConfig
from cicd.errors import BadInput, ConfigError
from tasks.llm import Gateway, gateway_from_config, load_prices, running_gateway
from tasks.llm.fake_upstream import FakeUpstream
from tasks.llm.prices import PriceTable
from tasks.llm.recordings import request_key
from tasks.llm.redaction import SecretRedactor, install_redactor, installed_redactor, redact

REAL_KEY = "sk-REAL-upstream-key-0123456789abcdef"
# 24 chars -> 6 + 4 tokens
SYSTEM: ChatCompletionSystemMessageParam = {"role": "system", "content": "You are a helpful agent."}


def usd(input_per_m: str, output_per_m: str, prompt: int, completion: int) -> float:
    total = Decimal(input_per_m) * prompt + Decimal(output_per_m) * completion
    return float(total / 1_000_000)


@pytest.fixture
def prices(tmp_path: Path) -> PriceTable:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "source": "test",
                "as_of": "2026-01-01",
                "models": {
                    "test-model": {"input": 1.0, "output": 2.0},
                    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
                },
            }
        )
    )
    return load_prices(path)


@pytest.fixture
def fixtures_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "llm-fixtures"
    directory.mkdir()
    (directory / "answers.yaml").write_text(
        '- match: "Hamlet"\n'
        '  reply: "William Shakespeare wrote Hamlet."\n'
        '- regex: "(?i)^hello\\\\b"\n'
        '  reply: "Hello!"\n'
    )
    (directory / "models.json").write_text(
        json.dumps(
            [
                {"match": "weather", "model": "gpt-4o-mini", "reply": "Sunny."},
            ]
        )
    )
    return directory


def chat(gateway: Gateway, content: str, key: str | None = None, **extra: Any) -> httpx.Response:
    body = {
        "model": extra.pop("model", "test-model"),
        "messages": [SYSTEM, {"role": "user", "content": content}],
        **extra,
    }
    headers = {"Authorization": f"Bearer {key or gateway.client_key}"}
    return httpx.post(
        gateway.base_url + "/chat/completions", json=body, headers=headers, timeout=10
    )


def client(gateway: Gateway) -> openai.OpenAI:
    env = gateway.env()
    return openai.OpenAI(
        base_url=env["OPENAI_BASE_URL"], api_key=env["OPENAI_API_KEY"], max_retries=0, timeout=10
    )


def stream_chat(
    gateway: Gateway, content: str, *, system: bool = False, include_usage: bool = True
) -> list[ChatCompletionChunk]:
    """A streamed chat completion through the OpenAI client, every chunk of it."""
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": content}]
    if system:
        messages.insert(0, SYSTEM)
    options: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    stream = client(gateway).chat.completions.create(
        model="test-model", messages=messages, stream=True, **options
    )
    return list(stream)


def streamed_text(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def sse_data(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]


# --- mock -------------------------------------------------------------------------


def test_mock_answers_from_fixtures_with_estimated_tokens_and_would_cost(
    prices: PriceTable, fixtures_dir: Path
) -> None:
    with running_gateway("mock", fixtures_dir=fixtures_dir, prices=prices) as gateway:
        hamlet = chat(gateway, "Who wrote Hamlet?")
        hello = chat(gateway, "HELLO there")
        weather_other_model = chat(gateway, "weather today?")
        weather = chat(gateway, "weather today?", model="gpt-4o-mini")
        calls = gateway.calls

    assert hamlet.status_code == 200
    body = hamlet.json()
    assert body["choices"][0]["message"]["content"] == "William Shakespeare wrote Hamlet."
    # system 10 + user "Who wrote Hamlet?" (17 chars -> 5) + 4 = 19; reply 33 chars -> 9
    assert body["usage"] == {"prompt_tokens": 19, "completion_tokens": 9, "total_tokens": 28}
    assert hello.json()["choices"][0]["message"]["content"] == "Hello!"
    assert "no fixture matched" in weather_other_model.json()["choices"][0]["message"]["content"]
    assert weather.json()["choices"][0]["message"]["content"] == "Sunny."

    first = calls[0]
    assert (first.mode, first.source, first.status, first.http_status) == (
        "mock",
        "mock",
        "ok",
        200,
    )
    assert (first.prompt_tokens, first.completion_tokens) == (19, 9)
    assert first.tokens_estimated and first.would_cost
    assert first.cost_usd == pytest.approx(usd("1", "2", 19, 9), rel=1e-12)
    assert first.spent_usd == 0.0
    assert len(calls) == 4


def test_mock_default_reply_is_deterministic_per_request(prices: PriceTable) -> None:
    with running_gateway("mock", prices=prices) as gateway:
        a1 = chat(gateway, "an open question").json()["choices"][0]["message"]["content"]
        a2 = chat(gateway, "an open question").json()["choices"][0]["message"]["content"]
        b = chat(gateway, "another question").json()["choices"][0]["message"]["content"]
    with running_gateway("mock", prices=prices) as gateway:
        a3 = chat(gateway, "an open question").json()["choices"][0]["message"]["content"]
    assert a1 == a2 == a3
    assert a1 != b


def test_mock_streams_with_the_openai_client_and_include_usage(
    prices: PriceTable, fixtures_dir: Path
) -> None:
    with running_gateway("mock", fixtures_dir=fixtures_dir, prices=prices) as gateway:
        chunks = stream_chat(gateway, "Who wrote Hamlet?", system=True)
        calls = gateway.calls
    assert streamed_text(chunks) == "William Shakespeare wrote Hamlet."
    usages = [(c.usage, c.choices) for c in chunks if c.usage is not None]
    assert [(u.prompt_tokens, u.completion_tokens, choices) for u, choices in usages] == [
        (19, 9, [])
    ]
    assert calls[0].stream and (calls[0].prompt_tokens, calls[0].completion_tokens) == (19, 9)


def test_mock_stream_without_include_usage_sends_no_usage_but_still_counts(
    prices: PriceTable,
) -> None:
    with running_gateway("mock", prices=prices) as gateway:
        response = chat(gateway, "count me", stream=True)
        calls = gateway.calls
    data = sse_data(response)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["choices"] for c in chunks) and not any(c.get("usage") for c in chunks)
    # system 10 + "count me" (8 chars -> 2) + 4 = 16
    assert calls[0].prompt_tokens == 16 and calls[0].completion_tokens > 0


# --- live ---------------------------------------------------------------------------


def test_live_forwards_with_the_real_key_and_prices_the_upstream_usage(
    upstream: FakeUpstream, prices: PriceTable
) -> None:
    with running_gateway(
        "live", upstream_url=upstream.url, api_key=REAL_KEY, prices=prices
    ) as gateway:
        response = chat(gateway, "What is the answer?", model="gpt-4o-mini")
        calls = gateway.calls
        spent = gateway.spent_usd
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "Echo: What is the answer?"
    assert upstream.requests[-1].headers["Authorization"] == f"Bearer {REAL_KEY}"
    call = calls[0]
    # words: system 5 + user 4 = 9, + 7 = 16; reply "Echo: What is the answer?" 5 + 3 = 8
    assert (call.prompt_tokens, call.completion_tokens) == (16, 8)
    assert not call.tokens_estimated and not call.would_cost
    assert (call.source, call.status) == ("upstream", "ok")
    # The upstream answers with a dated snapshot, priced as gpt-4o-mini.
    assert response.json()["model"] == "gpt-4o-mini-2024-07-18"
    assert call.cost_usd == pytest.approx(usd("0.15", "0.60", 16, 8), rel=1e-12)
    assert spent == call.cost_usd


def test_live_stream_gets_usage_from_the_final_chunk_even_if_the_client_did_not_ask(
    upstream: FakeUpstream, prices: PriceTable
) -> None:
    with running_gateway(
        "live", upstream_url=upstream.url, api_key=REAL_KEY, prices=prices
    ) as gateway:
        chunks = stream_chat(gateway, "stream this answer", include_usage=False)
        with_usage = stream_chat(gateway, "and this one")
        calls = gateway.calls
    assert streamed_text(chunks) == "Echo: stream this answer"
    assert all(c.usage is None for c in chunks)
    assert upstream.requests[0].body is not None
    assert upstream.requests[0].body["stream_options"] == {"include_usage": True}
    # "stream this answer" 3 words + 7 = 10; "Echo: stream this answer" 4 + 3 = 7
    assert (calls[0].prompt_tokens, calls[0].completion_tokens) == (10, 7)
    assert calls[0].cost_usd == pytest.approx(usd("1", "2", 10, 7), rel=1e-12)
    assert with_usage[-1].usage is not None and with_usage[-1].usage.prompt_tokens == 10
    assert (calls[1].prompt_tokens, calls[1].completion_tokens) == (10, 7)


def test_live_stream_reads_groq_style_usage(prices: PriceTable) -> None:
    with (
        FakeUpstream(usage_style="groq") as upstream,
        running_gateway(
            "live", upstream_url=upstream.url, api_key=REAL_KEY, prices=prices
        ) as gateway,
    ):
        response = chat(gateway, "one two three four", stream=True)
        calls = gateway.calls
    assert sse_data(response)[-1] == "[DONE]"
    # system 5 + 4 words + 7 = 16; "Echo: one two three four" 5 + 3 = 8
    assert (calls[0].prompt_tokens, calls[0].completion_tokens) == (16, 8)
    assert not calls[0].tokens_estimated


def test_live_refuses_a_client_without_the_exported_key(
    upstream: FakeUpstream, prices: PriceTable
) -> None:
    with running_gateway(
        "live", upstream_url=upstream.url, api_key=REAL_KEY, prices=prices
    ) as gateway:
        wrong = chat(gateway, "hi", key="sk-something-else")
        real = chat(gateway, "hi", key=REAL_KEY)
        calls = gateway.calls
    assert wrong.status_code == 401 and real.status_code == 401
    assert wrong.json()["error"]["type"] == "invalid_api_key"
    assert upstream.requests == []
    assert [c.status for c in calls] == ["error", "error"]


def test_live_passes_upstream_errors_through_and_records_them(
    upstream: FakeUpstream, prices: PriceTable
) -> None:
    with running_gateway(
        "live", upstream_url=upstream.url, api_key=REAL_KEY, prices=prices
    ) as gateway:
        response = chat(gateway, "please FAIL-429")
        calls = gateway.calls
    assert response.status_code == 429
    assert response.json()["error"]["message"] == "injected failure 429"
    assert (calls[0].status, calls[0].http_status, calls[0].cost_usd) == ("error", 429, 0.0)
    assert calls[0].error is not None and "injected failure 429" in calls[0].error


def test_unreachable_upstream_is_a_502_with_a_clear_error(prices: PriceTable) -> None:
    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with running_gateway("live", upstream_url=dead, api_key=REAL_KEY, prices=prices) as gateway:
        response = chat(gateway, "anyone there?")
        calls = gateway.calls
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "upstream_unavailable"
    assert dead in response.json()["error"]["message"]
    assert calls[0].status == "error" and REAL_KEY not in (calls[0].error or "")


def test_live_budget_blocks_calls_once_spent(upstream: FakeUpstream, prices: PriceTable) -> None:
    with running_gateway(
        "live",
        upstream_url=upstream.url,
        api_key=REAL_KEY,
        prices=prices,
        budget_usd=0.00001,
        budget_label="nightly",
    ) as gateway:
        first = chat(gateway, "What is the answer?")  # 16 + 2 * 8 = 32 micro-dollars
        second = chat(gateway, "And the next one?")
        calls = gateway.calls
    assert first.status_code == 200
    assert second.status_code == 402
    message = second.json()["error"]["message"]
    assert "LLM spend $0.000032 exceeds the budget of $0.00001 for nightly" in message
    assert len(upstream.requests) == 1
    assert [c.status for c in calls] == ["ok", "blocked"]


def test_parallel_calls_are_all_recorded(upstream: FakeUpstream, prices: PriceTable) -> None:
    with running_gateway(
        "live", upstream_url=upstream.url, api_key=REAL_KEY, prices=prices
    ) as gateway:
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda i=i: results.append(
                    chat(gateway, f"question {i}", stream=i % 2 == 0).status_code
                )
            )
            for i in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        calls = gateway.calls
    assert results == [200] * 8
    assert len(calls) == 8
    # each: system 5 + 2 words + 7 = 14 prompt; "Echo: question N" 3 + 3 = 6 completion
    assert sum(c.cost_usd or 0 for c in calls) == pytest.approx(8 * usd("1", "2", 14, 6))


# --- record / replay ----------------------------------------------------------------


def test_record_then_replay_with_the_upstream_stopped(
    upstream: FakeUpstream, prices: PriceTable, tmp_path: Path
) -> None:
    recordings = tmp_path / "recordings"
    with running_gateway(
        "record",
        upstream_url=upstream.url,
        api_key=REAL_KEY,
        recordings_dir=recordings,
        prices=prices,
    ) as gateway:
        live_json = chat(gateway, "What is the answer?").json()
        live_stream = stream_chat(gateway, "stream it")
        recorded = gateway.calls
    assert len(list(recordings.glob("*.json"))) == 2

    port = upstream.port
    upstream.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={}, timeout=2)

    with running_gateway("replay", recordings_dir=recordings, prices=prices) as gateway:
        replay_json = chat(gateway, "What is the answer?").json()
        replay_stream = stream_chat(gateway, "stream it")
        replayed = gateway.calls

    assert replay_json["choices"] == live_json["choices"]
    assert replay_json["usage"] == live_json["usage"]
    assert streamed_text(replay_stream) == streamed_text(live_stream) == "Echo: stream it"
    assert replay_stream[-1].usage == live_stream[-1].usage
    for before, after in zip(recorded, replayed, strict=True):
        assert (after.source, after.status, after.would_cost) == ("recording", "ok", True)
        assert (after.prompt_tokens, after.completion_tokens) == (
            before.prompt_tokens,
            before.completion_tokens,
        )
        assert after.cost_usd == before.cost_usd and after.spent_usd == 0.0
        assert after.request_key == before.request_key


def test_strict_replay_miss_is_an_error_and_a_body_change_is_a_miss(
    upstream: FakeUpstream, prices: PriceTable, tmp_path: Path
) -> None:
    recordings = tmp_path / "recordings"
    with running_gateway(
        "record",
        upstream_url=upstream.url,
        api_key=REAL_KEY,
        recordings_dir=recordings,
        prices=prices,
    ) as gateway:
        assert chat(gateway, "What is the answer?", temperature=0).status_code == 200
    with running_gateway("replay", recordings_dir=recordings, prices=prices) as gateway:
        hit = chat(gateway, "What is the answer?", temperature=0)
        changed = chat(gateway, "What is the answer?", temperature=0.7)
        unknown = chat(gateway, "Never asked before")
        calls = gateway.calls
    assert hit.status_code == 200
    assert changed.status_code == 404
    error = changed.json()["error"]
    assert error["type"] == "replay_miss"
    assert "differs in temperature" in error["message"]
    assert "llm_mode=record" in error["message"]
    assert unknown.status_code == 404
    assert "none with the same model and last user message" in unknown.json()["error"]["message"]
    assert [c.status for c in calls] == ["ok", "miss", "miss"]
    assert [c.http_status for c in calls] == [200, 404, 404]
    assert calls[1].cost_usd == 0.0


def test_a_corrupt_recording_is_a_500_naming_the_file(prices: PriceTable, tmp_path: Path) -> None:
    recordings = tmp_path / "recordings"
    recordings.mkdir()
    body = {"model": "test-model", "messages": [SYSTEM, {"role": "user", "content": "broken"}]}
    path = recordings / f"{request_key('/chat/completions', body)}.json"
    path.write_text('{"version": 1, "request": {}')
    with running_gateway("replay", recordings_dir=recordings, prices=prices) as gateway:
        response = chat(gateway, "broken")
        calls = gateway.calls
    assert response.status_code == 500
    assert str(path) in response.json()["error"]["message"]
    assert calls[0].status == "error" and str(path) in (calls[0].error or "")


def test_non_strict_replay_falls_through_to_the_mock(
    prices: PriceTable, tmp_path: Path, fixtures_dir: Path
) -> None:
    with running_gateway(
        "replay",
        recordings_dir=tmp_path / "none",
        strict_replay=False,
        fixtures_dir=fixtures_dir,
        prices=prices,
    ) as gateway:
        response = chat(gateway, "Who wrote Hamlet?")
        calls = gateway.calls
    assert response.status_code == 200
    assert (
        response.json()["choices"][0]["message"]["content"] == "William Shakespeare wrote Hamlet."
    )
    assert (calls[0].status, calls[0].source, calls[0].would_cost) == ("miss", "mock", True)
    assert calls[0].cost_usd == pytest.approx(usd("1", "2", 19, 9), rel=1e-12)


def test_recording_files_are_stable_and_keyed_on_path_model_and_body(
    upstream: FakeUpstream, prices: PriceTable, tmp_path: Path
) -> None:
    recordings = tmp_path / "recordings"
    body = {"model": "test-model", "messages": [SYSTEM, {"role": "user", "content": "stable?"}]}
    with running_gateway(
        "record",
        upstream_url=upstream.url,
        api_key=REAL_KEY,
        recordings_dir=recordings,
        prices=prices,
    ) as gateway:
        # Key order in the client's JSON does not matter: the body is canonicalised.
        reordered = json.dumps({"messages": body["messages"], "model": body["model"]})
        response = httpx.post(
            gateway.base_url + "/chat/completions",
            content=reordered,
            headers={
                "Authorization": f"Bearer {gateway.client_key}",
                "Content-Type": "application/json",
            },
        )
        assert response.status_code == 200
    key = request_key("/chat/completions", body)
    path = recordings / f"{key}.json"
    text = path.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, sort_keys=True, indent=2) + "\n"
    assert data["request"] == {"method": "POST", "path": "/chat/completions", "body": body}
    assert "headers" not in text.lower() and "authorization" not in text.lower()
    assert request_key("/chat/completions", {**body, "model": "gpt-4o-mini"}) != key


def test_the_real_key_never_reaches_recordings_logs_records_or_the_target(
    upstream: FakeUpstream, prices: PriceTable, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    recordings = tmp_path / "recordings"
    with running_gateway(
        "record",
        upstream_url=upstream.url,
        api_key=REAL_KEY,
        recordings_dir=recordings,
        prices=prices,
    ) as gateway:
        # The fake upstream echoes the Authorization header it got back in the answer.
        leaked = chat(gateway, "ECHO-AUTH please")
        streamed = chat(gateway, "ECHO-AUTH streamed", stream=True)
        failed = chat(gateway, "ECHO-AUTH FAIL-401")
        env = gateway.env()
        calls = gateway.calls
    assert f"Bearer {REAL_KEY}" in json.dumps([r.headers for r in upstream.requests])
    assert leaked.status_code == 200 and "[Bearer ***]" in leaked.text
    assert REAL_KEY not in leaked.text and REAL_KEY not in streamed.text
    assert REAL_KEY not in failed.text
    files = list(recordings.glob("*.json"))
    assert len(files) == 2
    for path in files:
        assert REAL_KEY not in path.read_text()
    assert REAL_KEY not in caplog.text
    assert all(REAL_KEY not in json.dumps(c.to_dict()) for c in calls)
    assert REAL_KEY not in json.dumps(env)
    assert env["OPENAI_API_KEY"] == gateway.client_key


# --- redaction and keys -------------------------------------------------------------


def test_redactor_masks_secrets_in_messages_args_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redactor = SecretRedactor([REAL_KEY])
    caplog.handler.addFilter(redactor)
    log = logging.getLogger("test.redaction")
    try:
        with caplog.at_level(logging.INFO, logger="test.redaction"):
            log.info("key is %s", REAL_KEY)
            log.info(f"inline {REAL_KEY}")
            try:
                raise RuntimeError(f"upstream said {REAL_KEY}")
            except RuntimeError:
                log.exception("call failed")
    finally:
        caplog.handler.removeFilter(redactor)
    assert REAL_KEY not in caplog.text
    assert "key is ***" in caplog.text and "inline ***" in caplog.text
    assert "RuntimeError: upstream said ***" in caplog.text
    assert redact(f"a {REAL_KEY} b", [REAL_KEY]) == "a *** b"
    with pytest.raises(ValueError):
        SecretRedactor(["abc"])


def test_install_redactor_covers_existing_handlers_once(tmp_path: Path) -> None:
    logger = logging.getLogger("test.install")
    logger.propagate = False
    handler = logging.FileHandler(tmp_path / "log.txt")
    logger.addHandler(handler)
    try:
        install_redactor(["first-secret-value"], logger_names=["test.install"])
        install_redactor(["second-secret-value"], logger_names=["test.install"])
        assert handler.filters.count(installed_redactor()) == 1
        logger.warning("first-secret-value and second-secret-value")
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert (tmp_path / "log.txt").read_text() == "*** and ***\n"


@pytest.mark.slow
def test_load_api_key_reads_a_prefect_secret_block_and_redacts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.blocks.system import Secret
    from prefect.testing.utilities import prefect_test_harness

    from tasks.llm import load_api_key

    with prefect_test_harness(server_startup_timeout=90):
        Secret(value="sk-from-a-secret-block-42").save(  # type: ignore[arg-type]
            "llm-key", overwrite=True
        )
        assert load_api_key("llm-key") == "sk-from-a-secret-block-42"
        assert "sk-from-a-secret-block-42" in installed_redactor().secrets
        with pytest.raises(BadInput, match="'missing-block' not found"):
            load_api_key("missing-block")


# --- configuration, endpoints, bad input -----------------------------------------------


def test_env_renders_the_export_templates(prices: PriceTable) -> None:
    with running_gateway("mock", prices=prices) as gateway:
        default = gateway.env()
        custom = gateway.env(
            {"GROQ_BASE_URL": "{base_url}", "LLM_PORT": "{port}", "GROQ_API_KEY": "{api_key}"}
        )
        unknown = r"llm\.export\.BAD': unknown placeholder \{password\}"
        with pytest.raises(ConfigError, match=unknown):
            gateway.env({"BAD": "{password}"})
        base_url = gateway.base_url
    assert default == {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": gateway.client_key}
    assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
    assert custom["LLM_PORT"] == base_url.split(":")[2].split("/")[0]
    assert gateway.client_key.startswith("sk-cicd-gateway-")


def test_models_endpoint(upstream: FakeUpstream, prices: PriceTable) -> None:
    with running_gateway("mock", prices=prices) as gateway:
        mocked = {m.id for m in client(gateway).models.list()}
    with running_gateway(
        "live", upstream_url=upstream.url, api_key=REAL_KEY, prices=prices
    ) as gateway:
        live = {m.id for m in client(gateway).models.list()}
    assert mocked == {"test-model", "gpt-4o-mini"}
    assert live == {"fake-model"}


def test_bad_requests_get_clear_errors_and_are_recorded(prices: PriceTable) -> None:
    with running_gateway("mock", prices=prices) as gateway:
        not_json = httpx.post(gateway.base_url + "/chat/completions", content=b"{nope")
        no_model = httpx.post(gateway.base_url + "/chat/completions", json={"messages": [SYSTEM]})
        wrong_path = httpx.post(gateway.base_url + "/embeddings", json={"input": "x"})
        calls = gateway.calls
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]
    assert no_model.status_code == 400
    assert no_model.json()["error"]["message"] == "field 'model': expected a non-empty string"
    assert wrong_path.status_code == 404 and "/embeddings" in wrong_path.json()["error"]["message"]
    assert [c.status for c in calls] == ["error", "error"]


def test_constructor_and_config_errors_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="needs the upstream API key"):
        Gateway("live", upstream_url="http://127.0.0.1:1/v1")
    with pytest.raises(BadInput, match="needs a recordings directory"):
        Gateway("replay")
    with pytest.raises(BadInput, match="unknown LLM mode 'cached'"):
        Gateway("cached")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"llm\.fixtures.*'llm-fixtures' does not exist"):
        gateway_from_config(LlmConfig(fixtures="llm-fixtures"), "mock", tmp_path)
    bad = tmp_path / "fixtures"
    bad.mkdir()
    (bad / "broken.yaml").write_text("- match: Hamlet\n- regex: '('\n  reply: x\n")
    with pytest.raises(ConfigError) as info:
        Gateway("mock", fixtures_dir=bad)
    message = str(info.value)
    assert str(bad / "broken.yaml") in message
    assert "answers[0].reply: expected a string" in message
    assert "answers[1].regex: invalid regular expression" in message


def test_gateway_from_config_resolves_dirs_in_the_checkout(tmp_path: Path) -> None:
    (tmp_path / "llm-fixtures").mkdir()
    (tmp_path / "llm-fixtures" / "a.yaml").write_text('- match: "ping"\n  reply: "pong"\n')
    gateway = gateway_from_config(LlmConfig(fixtures="llm-fixtures"), "mock", tmp_path)
    with gateway:
        assert chat(gateway, "ping?").json()["choices"][0]["message"]["content"] == "pong"
    replay = gateway_from_config(LlmConfig(), "replay", tmp_path)
    with replay:
        message = chat(replay, "x").json()["error"]["message"]
    assert str(tmp_path / ".cicd" / "llm-recordings") in message


def test_shipped_price_table_is_pinned_with_a_source() -> None:
    table = load_prices()
    assert table.source and table.as_of
    assert {"gpt-4o-mini", "gpt-4o", "llama-3.1-8b-instant"} <= set(table.models)
    assert table.lookup("gpt-4o-mini-2024-07-18") == table.lookup("gpt-4o-mini")
    assert table.cost("no-such-model", 10, 10) is None


def test_price_table_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"models": {"m": {"input": -1}}}))
    with pytest.raises(ConfigError) as info:
        load_prices(path)
    assert "models.m.input: expected a non-negative number of dollars, got -1" in str(info.value)
    assert "models.m.output: missing" in str(info.value)


def test_budget_exceeded_survives_pickling() -> None:
    from tasks.llm import BudgetExceeded

    error = pickle.loads(pickle.dumps(BudgetExceeded(0.1234, 0.1, "integration")))
    assert str(error) == "LLM spend $0.1234 exceeds the budget of $0.10 for integration"
    assert (error.spent_usd, error.budget_usd, error.label) == (0.1234, 0.1, "integration")
