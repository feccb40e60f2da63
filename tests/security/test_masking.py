"""Every secret in use is masked wherever we write it (issue 13, item 6).

The registry is process-wide, so each test registers values of its own
(random, never seen by another test) and checks outputs for exactly those.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from cicd import masking
from cicd.masking import MASK, MaskingFilter, SecretRegistry
from tasks.llm.redaction import SecretRedactor, install_redactor, installed_redactor, redact


def fresh_secret(prefix: str = "sk") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def test_a_registered_secret_is_masked_in_text_and_in_its_encoded_forms() -> None:
    plain = fresh_secret()
    core = uuid.uuid4().hex
    tricky = f'p&ss<"{core}"> /+=?'
    masking.register([plain, tricky])

    junit = ET.Element("testcase", {"name": "t"})
    ET.SubElement(junit, "failure", {"message": f"leaked {tricky}"}).text = f"got {tricky}"
    outputs = {
        "raw": f"token={plain} and {tricky}",
        "json": json.dumps({"stolen": tricky, "key": plain}),
        "junit": ET.tostring(junit, encoding="unicode"),
        "url": f"bolt://neo4j:{urllib.parse.quote(tricky, safe='')}@host",
    }

    masked = {name: masking.mask(text) for name, text in outputs.items()}

    for name, text in masked.items():
        assert plain not in text and tricky not in text, name
        assert MASK in text, name
        assert core not in text, (name, text)  # no encoded form left half-visible
    assert masked["raw"] == f"token={MASK} and {MASK}"
    # What is not a secret stays readable.
    assert json.loads(masked["json"]) == {"stolen": MASK, "key": MASK}


def test_mask_json_masks_keys_and_strings_at_any_depth_and_keeps_other_values() -> None:
    secret = fresh_secret("pypi")
    masking.register([secret])
    report = {
        "flow": "integration",
        "jobs": [{"name": "integration", "reason": f"auth {secret} failed", "passed": 3}],
        secret: ("tuple", secret, 1.5, None, True),
    }

    masked = masking.mask_json(report)

    assert secret not in json.dumps(masked)
    job = {"name": "integration", "reason": f"auth {MASK} failed", "passed": 3}
    assert masked["jobs"][0] == job
    assert masked[MASK] == ("tuple", MASK, 1.5, None, True)
    assert report["jobs"][0]["reason"] == f"auth {secret} failed"  # a copy, not in place


def test_longer_secrets_are_masked_whole_and_short_ones_are_refused() -> None:
    registry = SecretRegistry(["abcdef123", "abcdef123-and-more"])
    assert registry.mask("x abcdef123-and-more y abcdef123") == f"x {MASK} y {MASK}"
    with pytest.raises(ValueError, match="shorter than 6"):
        registry.add(["abc"])
    assert SecretRegistry().mask("nothing registered") == "nothing registered"


def test_the_logging_filter_masks_messages_arguments_and_tracebacks(tmp_path: Path) -> None:
    secret = fresh_secret()
    masking.register([secret])
    logger = logging.getLogger(f"test.masking.{uuid.uuid4().hex}")
    logger.propagate = False
    handler = logging.FileHandler(tmp_path / "job.log")
    logger.addHandler(handler)
    try:
        masking.install_filter([logger.name])
        masking.install_filter([logger.name])
        assert handler.filters.count(masking.FILTER) == 1
        logger.warning("key %s", secret)
        try:
            raise RuntimeError(f"upstream rejected {secret}")
        except RuntimeError:
            logger.exception("call failed")
        handler.flush()
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = (tmp_path / "job.log").read_text()
    assert secret not in text
    assert f"key {MASK}" in text and f"RuntimeError: upstream rejected {MASK}" in text


def test_redaction_keeps_its_names_and_feeds_the_one_registry() -> None:
    secret = fresh_secret()
    installed = install_redactor([secret], logger_names=[])

    assert installed is installed_redactor() is masking.FILTER
    assert secret in installed.secrets and secret in masking.registered()
    assert masking.mask(f"a {secret}") == f"a {MASK}"
    assert redact(f"a {secret} b", [secret]) == f"a {MASK} b"
    own = SecretRedactor([fresh_secret()])
    assert isinstance(own, MaskingFilter) and secret not in own.secrets


def test_a_command_that_prints_a_secret_in_use_shows_it_nowhere(tmp_path: Path) -> None:
    import sys

    from cicd import command

    secret = f"db-password-{uuid.uuid4().hex}"
    masking.register([secret])
    log = tmp_path / "job.log"

    result = command.run(
        [sys.executable, "-c", f"print('connecting with', {secret!r})"], log_path=log
    )

    assert result.ok
    assert secret not in result.output and MASK in result.output
    assert secret not in log.read_text() and MASK in log.read_text()


def test_a_job_whose_error_quotes_a_secret_reports_it_masked(tmp_path: Path) -> None:
    # The reason becomes the task's state message, sent to the Prefect API as
    # is, and its stored result (issue 11, item 5).
    from dataclasses import dataclass
    from typing import ClassVar

    from cicd.errors import CicdError
    from cicd.results import JobResult, JobState
    from cicd.runs import PipelineRun
    from tasks.job import Deadline, JobContext, JobInputs
    from tasks.job_runner import execute

    secret = fresh_secret("pw")
    masking.register([secret])

    @dataclass(frozen=True)
    class Quoting:
        name: str = "quoting"
        timeout: float = 10.0
        kind: ClassVar[str] = "quoting"
        version: ClassVar[str] = "1"

        def inputs(self) -> JobInputs:
            return JobInputs(None)

        def run(self, context: JobContext) -> JobResult:
            raise CicdError(f"neo4j-admin set-initial-password {secret} failed")

    context = JobContext(PipelineRun("t", "run-1", tmp_path), tmp_path, Deadline(10))
    result = execute(Quoting(), context)

    assert result.state is JobState.FAILED
    assert result.reason == f"neo4j-admin set-initial-password {MASK} failed"
