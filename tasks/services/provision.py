"""Fetch the Neo4j server's jars (and plugins) from Maven Central into the service cache.

The jars are GPLv3 and ~120 MB, so they are downloaded at set-up time into
``cicd.paths.neo4j_distribution(version)/lib`` and never committed; the repo
only holds ``.ci/neo4j/pom.xml``. Maven resolves the runtime closure of
``org.neo4j:neo4j`` (https://central.sonatype.com/artifact/org.neo4j/neo4j).

Plugins (``services.<name>.plugins``) come the same way, each from its own
POM under ``.ci/neo4j/<plugin>/`` into ``<distribution>/plugins/<plugin>-<version>``.

Stdlib-only on purpose: ``scripts/provision-neo4j`` runs this file by path on
a fresh machine, before anything but Python and Maven can be assumed.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cicd.errors import BadInput, InfrastructureError
from cicd.locking import file_lock
from cicd.paths import neo4j_distribution

# The newest 5.26.x on Maven Central (5.26.33 is announced but not published there).
DEFAULT_NEO4J_VERSION = "5.26.30"
POM = Path(__file__).resolve().parents[2] / ".ci" / "neo4j" / "pom.xml"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies"
MAVEN_TIMEOUT_SECONDS = 1800.0
# The newest 5.26.x of org.neo4j.procedure:apoc-core on Maven Central
# (https://repo1.maven.org/maven2/org/neo4j/procedure/apoc-core/maven-metadata.xml).
PLUGINS = {"apoc": ("apoc-core", "apoc.version", "5.26.19")}
_EXACT_VERSION = re.compile(r"^5\.26\.\d+$")


def distribution_version(requested: str) -> str:
    """The exact release for a ``services.<name>.version`` value: "5.26" means the pinned patch."""
    if requested == "5.26":
        return DEFAULT_NEO4J_VERSION
    if _EXACT_VERSION.match(requested):
        return requested
    raise BadInput(f"Neo4j version {requested!r}: expected '5.26' or an exact '5.26.N'")


def lib_dir(version: str) -> Path:
    return neo4j_distribution(version) / "lib"


def is_provisioned(version: str) -> bool:
    """The jar cache is complete: it is only ever created by an atomic rename."""
    return (lib_dir(version) / f"neo4j-{version}.jar").is_file()


def maven_argv(
    mvn: str, pom: Path, version_property: tuple[str, str], output_dir: Path
) -> list[str]:
    # The dependency plugin is named with its version: Maven 3.8's super-POM
    # would otherwise pick 2.8, which lacks options used here.
    name, version = version_property
    return [
        mvn, "-B", "-q", "-f", str(pom), DEPENDENCY_PLUGIN,
        "-DincludeScope=runtime",
        f"-DoutputDirectory={output_dir}",
        f"-D{name}={version}",
    ]


def ensure_neo4j(
    version: str = DEFAULT_NEO4J_VERSION,
    *,
    pom: Path = POM,
    mvn: str = "mvn",
    timeout: float = MAVEN_TIMEOUT_SECONDS,
) -> Path:
    """Return the lib directory of ``version``, downloading it first if missing.

    Atomic: Maven writes into a temp dir beside the cache, which is renamed
    into place only after Maven succeeded, so a killed download never leaves a
    half-filled ``lib`` that later runs would trust. A file lock makes
    concurrent callers wait for one download instead of racing.
    """
    target = lib_dir(version)
    if is_provisioned(version):
        return target
    return _maven_copy(
        f"Neo4j {version}", target, f"neo4j-{version}.jar",
        pom=pom, version_property=("neo4j.version", version), mvn=mvn, timeout=timeout,
    )  # fmt: skip


def plugin_dir(plugin: str, neo4j_version: str) -> Path:
    """Where ``plugin``'s jars are cached, beside the server's ``lib``."""
    artifact, _, plugin_version = _plugin(plugin)
    return neo4j_distribution(neo4j_version) / "plugins" / f"{artifact}-{plugin_version}"


def ensure_plugin(
    plugin: str,
    neo4j_version: str = DEFAULT_NEO4J_VERSION,
    *,
    mvn: str = "mvn",
    timeout: float = MAVEN_TIMEOUT_SECONDS,
) -> Path:
    """The directory of ``plugin``'s jars for ``neo4j_version``, fetched first if missing.

    Jars the server's ``lib`` already has (commons-lang3, commons-text at a
    newer version) are left out: two versions of a class on one class path is
    whichever comes first, not what either was built against.
    """
    artifact, prop, plugin_version = _plugin(plugin)
    target = plugin_dir(plugin, neo4j_version)
    marker = f"{artifact}-{plugin_version}.jar"
    if (target / marker).is_file():
        return target
    server = ensure_neo4j(neo4j_version, mvn=mvn, timeout=timeout)
    return _maven_copy(
        f"{artifact} {plugin_version}", target, marker,
        pom=POM.parent / plugin / "pom.xml", version_property=(prop, plugin_version),
        mvn=mvn, timeout=timeout, already_in=server,
    )  # fmt: skip


def _plugin(plugin: str) -> tuple[str, str, str]:
    try:
        return PLUGINS[plugin]
    except KeyError:
        raise BadInput(
            f"unknown Neo4j plugin {plugin!r}; expected one of {sorted(PLUGINS)}"
        ) from None


def artifact_name(jar: str) -> str:
    """``commons-lang3-3.12.0.jar`` -> ``commons-lang3``."""
    return re.sub(r"-\d[^-]*(-[A-Za-z]\w*)?\.jar$", "", jar)


def _maven_copy(
    what: str,
    target: Path,
    marker: str,
    *,
    pom: Path,
    version_property: tuple[str, str],
    mvn: str,
    timeout: float,
    already_in: Path | None = None,
) -> Path:
    """Run copy-dependencies of ``pom`` into a staging dir, then rename it to ``target``."""
    base = target.parent
    base.mkdir(parents=True, exist_ok=True)
    with file_lock(base / ".provision.lock"):
        if (target / marker).is_file():
            return target
        if not pom.is_file():
            raise InfrastructureError(f"cannot provision {what}: {pom} does not exist")
        if shutil.which(mvn) is None:
            raise InfrastructureError(
                f"cannot provision {what}: Maven ({mvn!r}) is not on PATH; "
                f"install Maven or fill {target} by hand"
            )
        staging = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=base))
        try:
            argv = maven_argv(mvn, pom, version_property, staging)
            try:
                done = subprocess.run(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    errors="replace", timeout=timeout, check=False,
                )
            except subprocess.TimeoutExpired:
                raise InfrastructureError(
                    f"Maven did not finish fetching {what} in {timeout:.0f}s"
                ) from None
            if done.returncode != 0:
                tail = "\n".join(done.stdout.rstrip().splitlines()[-30:])
                raise InfrastructureError(
                    f"Maven failed to fetch {what} (exit {done.returncode}): "
                    f"{' '.join(argv)}\n{tail}"
                )
            if not (staging / marker).is_file():
                raise InfrastructureError(
                    f"Maven succeeded but {staging} has no {marker}; check {pom}"
                )
            if already_in is not None:
                present = {artifact_name(jar.name) for jar in already_in.glob("*.jar")}
                for jar in staging.glob("*.jar"):
                    if jar.name != marker and artifact_name(jar.name) in present:
                        jar.unlink()
            if target.exists():
                # An incomplete leftover (no marker jar) from an older layout.
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="provision-neo4j",
        description="Download the Neo4j server jars into the cicd-flows cache (idempotent).",
    )
    parser.add_argument("--version", default=DEFAULT_NEO4J_VERSION, help="5.26 or an exact 5.26.N")
    parser.add_argument("--pom", type=Path, default=POM)
    parser.add_argument("--mvn", default="mvn")
    parser.add_argument(
        "--plugin", action="append", default=[], choices=sorted(PLUGINS),
        help="also fetch this plugin (repeatable); jobs fetch the ones they need on first use",
    )
    args = parser.parse_args(argv)
    try:
        version = distribution_version(args.version)
        already = is_provisioned(version)
        start = time.monotonic()
        target = ensure_neo4j(version, pom=args.pom, mvn=args.mvn)
        plugins = [ensure_plugin(name, version, mvn=args.mvn) for name in args.plugin]
    except (BadInput, InfrastructureError) as exc:
        print(f"provision-neo4j: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, BadInput) else 1
    jars = len(list(target.glob("*.jar")))
    state = "already present" if already else f"downloaded in {time.monotonic() - start:.1f}s"
    print(f"Neo4j {version}: {jars} jars in {target} ({state})")
    for plugin in plugins:
        print(f"plugin: {len(list(plugin.glob('*.jar')))} jars in {plugin}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
