"""pip silently installs an ancient dagster-postgres when the Dagster family disagrees."""

from importlib.metadata import version


def test_dagster_family_versions_agree():
    core = version("dagster")
    assert core == "1.13.27"
    for package in ("dagster-webserver", "dagster-graphql", "dagster-pipes", "dagster-shared"):
        assert version(package) == core, package
    # Libraries are versioned 0.(minor+16).patch alongside core 1.minor.patch.
    major, minor, patch = core.split(".")
    assert version("dagster-postgres") == f"0.{int(minor) + 16}.{patch}"
