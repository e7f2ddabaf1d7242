"""The documentation is part of the product: check it against the code's declarations.

The telemetry guide's tables against the metric and span names, the configuration tables
against the dataclasses, the examples by running them, and the whole site by building it in
strict mode, so that a renamed symbol breaks the tests rather than the docs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import griffe
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

import rtguard
import rtguard.simulator
import rtguard.telemetry
from rtguard import IncompleteReason, Outcome, ReconnectPolicy, SessionConfig, SessionEvent
from rtguard.simulator import Scenario
from rtguard.telemetry import RtguardMetrics
from rtguard.telemetry import _names as names

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
# The page that holds the span, event and metric tables.
TELEMETRY = (DOCS / "guide" / "telemetry.md").read_text()
PUBLIC_MODULES = (rtguard, rtguard.simulator, rtguard.telemetry)
# Python examples that are whole programs: each one runs, and prints what it promises.
RUNNABLE = {
    "README.md": "output delivered (success)",
    "docs/quickstart.md": "output delivered (invalid_arguments)",
    "docs/guide/simulator.md": "2 connections, 6 calls issued",
}


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


def table_rows(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with ``header``."""
    start = text.index(f"\n{header}") + 1
    lines = text[start:].split("\n\n", 1)[0].splitlines()[2:]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def public_names() -> set[str]:
    return {
        f"{module.__name__}.{name}"
        for module in PUBLIC_MODULES
        for name in module.__all__
        if name != "__version__"
    }


# --- the telemetry guide's tables ------------------------------------------------------------


def test_every_metric_is_documented_and_every_documented_metric_exists() -> None:
    registry = CollectorRegistry()
    RtguardMetrics(registry)
    exported = {family.name for family in registry.collect()}
    # prometheus_client reports counters without the _total suffix.
    exported = {f"{n}_total" if f"{n}_total" in TELEMETRY else n for n in exported}
    documented = set(re.findall(r"^\| `((?:rtguard|gen_ai)_[a-z_]+)` \|", TELEMETRY, re.MULTILINE))
    assert documented == exported


def test_documented_label_values_match_the_code() -> None:
    reasons = tuple(reason.value for reason in IncompleteReason)
    outcomes = tuple(outcome.value for outcome in Outcome)
    for values in (
        names.SWALLOWED_PLACES,
        names.PROTOCOL_ERROR_KINDS,
        names.SEND_RESULTS,
        reasons,
        outcomes,
    ):
        for value in values:
            assert f"`{value}`" in TELEMETRY, value


def test_span_names_are_documented() -> None:
    for span_name in (
        names.OP_INVOKE_AGENT,
        names.OP_REALTIME_INFERENCE,
        names.OP_EXECUTE_TOOL,
        names.SPAN_SEND_OUTPUT,
        names.EVENT_SESSION_STARTED,
        names.EVENT_SESSION_ENDED,
    ):
        assert f"`{span_name}" in TELEMETRY, span_name


def test_every_span_attribute_is_documented() -> None:
    attributes = [
        value
        for key, value in vars(names).items()
        if key.startswith(("GEN_AI_", "RTGUARD_")) and "." in value
    ]
    for attribute in [*attributes, names.ERROR_TYPE]:
        assert f"`{attribute}" in TELEMETRY, attribute
    for value in (names.END_COMPLETED, names.END_INTERRUPTED, names.END_SESSION_CLOSED):
        assert f"`{value}`" in TELEMETRY, value
    assert f"`{names.OUTCOME_CANCELLED}`" in TELEMETRY


# --- the README ------------------------------------------------------------------------------


def test_readme_opens_with_the_two_commands() -> None:
    block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()[1:]]
    assert commands == ["make demo", "make test"]


def test_readme_links_resolve() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).is_file(), target


# --- the guide's other tables ----------------------------------------------------------------


def _check_fields_table(page: str, header: str, instance: Any) -> None:
    """Every field of ``instance``'s dataclass is in the table once, and each default the
    table writes (the first code span of its cell, per field) is the field's actual one."""
    namespace = {name: getattr(rtguard, name) for name in rtguard.__all__}
    documented: list[str] = []
    for row in table_rows((DOCS / page).read_text(), header):
        fields = re.findall(r"`([a-z_]+)`", row[0])
        defaults = re.findall(r"`([^`]+)`", row[1])
        documented += fields
        if len(fields) == 1:
            defaults = defaults[:1]  # the rest of the cell explains it
        for field, written in zip(fields, defaults, strict=len(fields) > 1):
            assert eval(written, dict(namespace)) == getattr(instance, field), (page, field)
    assert sorted(documented) == sorted(f.name for f in dataclasses.fields(instance))


def test_session_config_table_matches_the_dataclass() -> None:
    _check_fields_table("guide/sessions.md", "| field | default | meaning |", SessionConfig())


def test_reconnect_policy_table_matches_the_dataclass() -> None:
    _check_fields_table("guide/continuity.md", "| field | default | meaning |", ReconnectPolicy())


def test_every_event_is_in_the_events_table() -> None:
    rows = table_rows((DOCS / "guide" / "events.md").read_text(), "| event | when |")
    documented = " ".join(row[0] for row in rows)
    for event in typing.get_args(SessionEvent):
        assert re.search(rf"`{event.__name__}[(`]", documented), event.__name__


def test_shipped_scenarios_are_documented_and_the_example_file_is_valid() -> None:
    page = (DOCS / "guide" / "cli.md").read_text()
    for name in Scenario.shipped_names():
        assert f"`{name}`" in page, name
    (example,) = code_blocks(page, "yaml")
    scenario = Scenario.parse(example, source="docs/guide/cli.md")
    assert len(scenario.calls) == 20
    assert yaml.safe_load(example)["faults"]["reject_type"] == scenario.faults.reject_type


# --- examples --------------------------------------------------------------------------------


@pytest.mark.parametrize(("page", "promise"), sorted(RUNNABLE.items()))
def test_example_programs_run(page: str, promise: str, tmp_path: Path) -> None:
    program = code_blocks((ROOT / page).read_text(), "python")[0]
    script = tmp_path / "example.py"
    script.write_text(program)
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert promise in done.stdout, done.stdout


def test_every_python_example_compiles() -> None:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
    blocks = [(page, block) for page in pages for block in code_blocks(page.read_text(), "python")]
    assert len(blocks) >= 6
    for page, block in blocks:
        compile(block, str(page), "exec")


# --- the API reference -----------------------------------------------------------------------


def test_the_reference_documents_every_public_name_once() -> None:
    directives = [
        line.removeprefix("::: ").strip()
        for page in sorted((DOCS / "reference").glob("*.md"))
        for line in page.read_text().splitlines()
        if line.startswith("::: ")
    ]
    assert sorted(directives) == sorted(public_names())


def test_the_public_api_has_docstrings() -> None:
    """What the reference shows: every public name, and each public method and property of
    the public classes, says what it is."""
    package = griffe.load("rtguard", search_paths=[str(ROOT / "src")])
    missing = []
    for path in sorted(public_names()):
        obj = package[path.removeprefix("rtguard.")]
        if not obj.docstring:
            missing.append(path)
        if not obj.is_class:
            continue
        for name, member in obj.members.items():
            callable_member = member.is_function or "property" in member.labels
            if not name.startswith("_") and callable_member and not member.docstring:
                missing.append(f"{path}.{name}")
    assert missing == []


def test_each_metrics_attribute_names_its_metric() -> None:
    """The reference's RtguardMetrics attributes say which metric each one is."""
    package = griffe.load("rtguard", search_paths=[str(ROOT / "src")])
    documented = package["telemetry.RtguardMetrics"].members
    metrics = RtguardMetrics(CollectorRegistry())
    instruments = {
        name: value for name, value in vars(metrics).items() if isinstance(value, MetricWrapperBase)
    }
    assert len(instruments) >= 15
    for name, instrument in instruments.items():
        docstring = documented[name].docstring
        assert docstring is not None, name
        (family,) = instrument.describe()
        written = docstring.value.split("``")[1]
        assert written.removesuffix("_total") == family.name, name


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """``make docs`` in a test: any warning (a broken link or anchor, a page missing from the
    nav, a reference to a symbol that no longer exists) fails it."""
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    rendered = "".join(page.read_text() for page in (site / "reference").rglob("*.html"))
    for path in public_names():
        assert f'id="{path}"' in rendered, path
    assert 'id="rtguard.RealtimeSession.send_message"' in rendered
