"""Result storage that every worker shares, so a rerun is served from the
cache on any of them.

Prefect writes a task's result (and the cache record its key points to) to
the *default result storage*, which each client resolves on its own
(``prefect/results.py``, ``get_default_result_storage``), first match wins:

1. ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`` in the client's settings (a block slug);
2. the server's default result-storage block (Prefect 3.9: ``PUT /api/admin/storage``,
   ``prefect result-storage``);
3. ``PREFECT_LOCAL_STORAGE_PATH`` (``PREFECT_HOME/storage`` unless set).

Out of the box that is case 3 with each worker's own ``PREFECT_HOME``: a job
cached on worker A is computed again on worker B. ``cicd up`` therefore sets
case 2 on the server, so every worker and every ``cicd run`` against it use
one store without being configured one by one:

- by default a ``LocalFileSystem`` block ``cicd-results`` on
  ``$CICD_HOME/results``, the directory all workers of one host (or one shared
  volume, deployments/docker-compose.yml) already share;
- or, with ``CICD_RESULT_STORAGE_BLOCK=<type>/<name>``, a block the operator
  saved (``s3-bucket/...`` from prefect-aws, ``gcs-bucket/...`` from prefect-gcp,
  ``remote-file-system/...`` for any fsspec URL), for workers on several hosts.

A server default set by someone else is left alone unless
``CICD_RESULT_STORAGE_BLOCK`` asks for another. The cache key never contains a
path (``tasks/job_runner.py``, ``cache_key``), so the same job has the same key
on every worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from cicd.errors import BadInput

BLOCK_ENV = "CICD_RESULT_STORAGE_BLOCK"
LOCAL_BLOCK_NAME = "cicd-results"
RESULTS_DIR = "results"


def results_path(cicd_home: Path) -> Path:
    return cicd_home / RESULTS_DIR


@dataclass(frozen=True)
class ResultStorage:
    slug: str  # "local-file-system/cicd-results"
    block_id: str
    changed: bool  # the server's default was set by this call


def ensure_result_storage(
    api_url: str, cicd_home: Path, auth_string: str | None, block: str | None = None
) -> ResultStorage:
    """Make ``block`` (default: ``$CICD_HOME/results``) the server's default result storage."""
    from prefect.blocks.core import Block
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.exceptions import ObjectNotFound
    from prefect.filesystems import LocalFileSystem
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    block = block if block is not None else os.environ.get(BLOCK_ENV) or None
    # Block.save/load go through the client of the current settings.
    updates = {PREFECT_API_URL: api_url}
    if auth_string:
        updates[PREFECT_API_AUTH_STRING] = auth_string
    unset = [] if auth_string else [PREFECT_API_AUTH_STRING]
    with (
        temporary_settings(updates=updates, restore_defaults=unset),
        SyncPrefectClient(api_url, auth_string=auth_string) as client,
    ):
        current = client.read_server_default_result_storage().default_result_storage_block_id
        if block is None:
            if current is not None:
                document = client.read_block_document(current, include_secrets=False)
                slug = f"{document.block_type.slug if document.block_type else '?'}/{document.name}"
                if document.name != LOCAL_BLOCK_NAME:
                    # An operator's choice (remote storage): keep it.
                    return ResultStorage(slug, str(current), changed=False)
            storage = LocalFileSystem(basepath=str(results_path(cicd_home)))
            saved = storage.save(LOCAL_BLOCK_NAME, overwrite=True)
            # save() is async-dispatched; called synchronously it returns the id.
            block_id = saved if isinstance(saved, UUID) else None
            slug = f"local-file-system/{LOCAL_BLOCK_NAME}"
        else:
            if block.count("/") != 1:
                raise BadInput(f"{BLOCK_ENV}={block!r}: expected a block slug <type>/<name>")
            try:
                loaded: Block = Block.load(block)  # type: ignore[assignment] # sync here
            except (ValueError, ObjectNotFound) as exc:
                raise BadInput(
                    f"{BLOCK_ENV}={block!r}: no such block on {api_url} ({exc})"
                ) from None
            block_id = loaded._block_document_id
            slug = block
        if block_id is None:
            raise BadInput(f"{slug}: the block has no id on {api_url}")
        if current == block_id:
            return ResultStorage(slug, str(block_id), changed=False)
        client.update_server_default_result_storage(block_id)
    return ResultStorage(slug, str(block_id), changed=True)
