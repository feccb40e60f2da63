"""The gateway's four modes and how each produces an answer.

* mock: a fixture reply or one derived from the request hash (``mock.py``).
* replay: the recorded response for the exact request (``recordings.py``).
* record / live: the upstream's response, forwarded as it arrives
  (``upstream.py``); record also keeps it.

PR runs use ``mock``, main runs ``replay`` (a cached LLM), nightly ``live``,
and ``record`` refreshes the recordings. ``answering.py`` dispatches a
request to its mode.
"""

from __future__ import annotations

from typing import Literal

Mode = Literal["mock", "replay", "record", "live"]
MODES: tuple[Mode, ...] = ("mock", "replay", "record", "live")
# The modes that reach the real upstream and spend money.
UPSTREAM_MODES: tuple[Mode, ...] = ("record", "live")
