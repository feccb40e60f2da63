"""``scripts/provision-neo4j``'s last step: write the Neo4j class-data archive once.

A server that dumps its classes at exit (-XX:ArchiveClassesAtExit) takes 7-40 s
to stop on a busy 2-core box; doing it here, with all the time it needs,
lets every later server map the archive read-only and stop in ~1-3 s (see
``neo4j_launch``'s class-data section and bench/README.md).

    python -m tasks.services.class_data [--version 5.26.N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from cicd.errors import BadInput, InfrastructureError
from tasks.services import provision
from tasks.services.neo4j_launch import cds_archive, java_binary
from tasks.services.neo4j_process import Neo4jProcessBackend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="provision-neo4j (class data)",
        description="Write the Neo4j class-data-sharing archive beside the jars (idempotent).",
    )
    parser.add_argument("--version", default=provision.DEFAULT_NEO4J_VERSION)
    args, _ = parser.parse_known_args(argv)  # the jar step's own options pass through
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        version = provision.distribution_version(args.version)
        lib = provision.ensure_neo4j(version)
        archive = cds_archive(java_binary(), lib)
        already = archive.is_file()
        start = time.monotonic()
        written = Neo4jProcessBackend(provision_missing=False).write_class_data(lib)
    except (BadInput, InfrastructureError) as exc:
        print(f"provision-neo4j: class-data archive: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, BadInput) else 1
    if written is None:
        print(f"provision-neo4j: the class-data writer did not exit cleanly; {archive} not written",
              file=sys.stderr)
        return 1
    state = "already present" if already else f"written in {time.monotonic() - start:.1f}s"
    print(f"Neo4j {version}: class-data archive {written} ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
