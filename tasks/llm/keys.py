"""The upstream API key: loaded from a Prefect Secret block, masked in logs at once."""

from __future__ import annotations

from typing import Any, cast

from cicd.errors import BadInput
from tasks.llm.redaction import install_redactor


def load_api_key(secret_block_name: str, *, redact: bool = True) -> str:
    """The value of the Secret block ``secret_block_name`` (``llm.api_key_secret``).

    With ``redact`` (the default) the value is registered with the log
    redactor before it is returned: Prefect itself does not mask Secret
    values, and a key printed once would be stored in the server's logs.
    """
    # Imported here: loading Prefect's block machinery costs about a second
    # and the gateway itself does not need it in mock and replay runs.
    from prefect.blocks.system import Secret

    try:
        # _sync: the sync path even when called from an async flow, which
        # would otherwise get a coroutine back.
        block = cast("Secret[Any]", Secret.load(secret_block_name, _sync=True))  # type: ignore[call-arg]
    except ValueError as exc:
        raise BadInput(
            f"llm.api_key_secret: Prefect Secret block {secret_block_name!r} not found ({exc}); "
            f"create it with Secret(value=...).save({secret_block_name!r})"
        ) from None
    value = block.get()
    if not isinstance(value, str) or not value.strip():
        raise BadInput(
            f"llm.api_key_secret: Prefect Secret block {secret_block_name!r} holds no API key "
            "(expected a non-empty string)"
        )
    value = value.strip()
    if redact:
        install_redactor([value])
    return value
