"""The one place where what escapes a command becomes an exit code and a line.

Modelled on pre-commit's ``error_handler.py``
(https://github.com/pre-commit/pre-commit/blob/main/pre_commit/error_handler.py):
``main()`` runs every command inside :func:`error_handler`; expected errors
get one ``cicd: error:`` line, anything unexpected gets one ``cicd: internal
error:`` line naming a log file that holds the traceback.

Exit codes:

- 0 the pipeline (or command) passed;
- 1 the pipeline failed, or a ``CicdError`` stopped it (a fetch that kept
  failing, a project that does not build);
- 2 bad input (``BadInput``: unknown repo or ref, invalid ``cicd.yaml``, a bad
  option);
- 3 an unexpected exception, a bug or an environment we did not foresee;
- 130 interrupted (Ctrl-C); 128+N for a fatal signal N.

With ``--json`` stdout always carries exactly one object, on every exit:
the report when there is one, else ``{"state": ..., "exit_code": ..., "error": ...}``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cicd import command, masking, paths
from cicd.errors import BadInput, CicdError

EXIT_PASSED = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
# An error message shown on one line is cut here: the traceback log has the rest.
MESSAGE_LIMIT = 2000


@dataclass
class Outcome:
    """What the command returned (``code``) and, with ``--json``, whether its
    one object was printed already (``printed``)."""

    json_output: bool
    flow: str | None = None
    code: int = EXIT_PASSED
    printed: bool = False

    def print_json(self, payload: dict[str, Any]) -> None:
        if self.json_output and not self.printed:
            # The one object on stdout never carries a secret in use.
            print(json.dumps(masking.mask_json(payload)), flush=True)
            self.printed = True


def one_line(message: str, limit: int = MESSAGE_LIMIT) -> str:
    flat = " ".join(message.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def log_traceback(exc: BaseException) -> Path:
    """Write the traceback to ``$CICD_HOME/logs/`` and return the file."""
    directory = paths.home() / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    path = directory / f"cicd-{stamp}-{os.getpid()}.log"
    text = f"cicd {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(exc))
    # An exception's message may carry a secret in use (a command line, a URL).
    path.write_text(masking.mask(text), encoding="utf-8")
    return path


def _fail(outcome: Outcome, code: int, state: str, line: str, error: str) -> None:
    # Every secret in use is masked here too: an error message may quote a
    # command line that carried one (issue 11: a cancelled Neo4j start
    # printed ``set-initial-password <password>``).
    line, error = masking.mask(line), masking.mask(error)
    print(line, file=sys.stderr, flush=True)
    payload: dict[str, Any] = {"state": state, "exit_code": code, "error": error}
    if outcome.flow is not None:
        # The shape of a report, with no job run.
        payload = {"flow": outcome.flow, **payload, "jobs": []}
    outcome.print_json(payload)
    outcome.code = code


@contextlib.contextmanager
def error_handler(json_output: bool = False, flow: str | None = None) -> Iterator[Outcome]:
    """Run the block; turn whatever escapes it into ``outcome.code``."""
    outcome = Outcome(json_output=json_output, flow=flow)
    try:
        yield outcome
    except BadInput as exc:
        message = one_line(str(exc))
        _fail(outcome, EXIT_BAD_INPUT, "error", f"cicd: error: {message}", message)
    except CicdError as exc:
        message = one_line(str(exc))
        _fail(outcome, EXIT_FAILED, "failed", f"cicd: error: {message}", message)
    except KeyboardInterrupt:
        command.kill_all(close=True)
        _fail(outcome, EXIT_INTERRUPTED, "interrupted", "cicd: interrupted", "interrupted")
    except SystemExit as exc:
        # A fatal signal (see main.terminate) or sys.exit deep inside a library.
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILED
        if code != EXIT_PASSED:
            outcome.print_json(
                {"state": "error", "exit_code": code, "error": f"exited with {code}"}
                | ({"flow": outcome.flow} if outcome.flow else {})
            )
        outcome.code = code
    except Exception as exc:
        try:
            where = f"traceback in {log_traceback(exc)}"
        except OSError as log_error:
            where = f"no traceback log: {log_error}"
        message = one_line(f"{type(exc).__name__}: {exc}")
        _fail(
            outcome, EXIT_INTERNAL, "error", f"cicd: internal error: {message} ({where})", message
        )
