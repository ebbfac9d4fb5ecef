"""The docs keep up with the code: every public name is documented."""

from __future__ import annotations

import pathlib

import eventbus

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"


def test_every_public_name_has_a_heading_in_the_reference() -> None:
    reference = (DOCS / "reference.md").read_text()
    missing = [name for name in eventbus.__all__ if f"### `{name}`" not in reference]
    assert missing == [], f"document these in docs/reference.md: {missing}"


def test_every_testing_helper_has_a_heading_in_the_reference() -> None:
    import eventbus.testing

    reference = (DOCS / "reference.md").read_text()
    section = reference.partition("## `eventbus.testing`")[2]
    missing = [name for name in eventbus.testing.__all__ if f"### `{name}`" not in section]
    assert missing == [], f"document these under eventbus.testing in docs/reference.md: {missing}"
    fixtures = section.partition("### Fixtures")[2]
    import eventbus.testing.plugin as plugin

    assert all(f"`{name}`" in fixtures for name in plugin.__all__)


def test_every_name_of_eventbus_redis_has_a_heading_in_the_reference() -> None:
    import eventbus.redis

    reference = (DOCS / "reference.md").read_text()
    missing = [name for name in eventbus.redis.__all__ if f"### `{name}`" not in reference]
    assert missing == [], f"document these in docs/reference.md: {missing}"


def test_the_version_is_the_installed_distributions() -> None:
    import importlib.metadata

    assert eventbus.__version__ == importlib.metadata.version("eventbus")


def test_the_license_file_is_the_license_pyproject_declares() -> None:
    import tomllib

    root = DOCS.parent
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "MIT"
    text = (root / "LICENSE").read_text()
    assert text.startswith("MIT License")
    assert "WITHOUT WARRANTY OF ANY KIND" in text


def test_no_doc_promises_a_release_or_talks_about_internal_issues() -> None:
    pages = {
        page.name: page.read_text() for page in [*DOCS.glob("*.md"), DOCS.parent / "README.md"]
    }
    for name, text in pages.items():
        assert "from a release" not in text, f"{name} mentions a release that does not exist"
        assert "the issue" not in text.lower(), f"{name} talks about an internal issue"
        assert "fence" not in text, f"{name} shows the doc-test plugin's module name to readers"


def test_the_docs_examples_print_nothing_into_pytests_output() -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "docs/tracing.md"],
        cwd=DOCS.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    # The page prints a trace tree; none of it may reach the terminal.
    assert "└──" not in run.stdout, run.stdout
