"""otel-collector.yaml, checked for what can be checked without a collector binary (none runs
on these machines): every pipeline references defined components, the component names are
those of the release it targets, its ports are the documented ones, and its span-metrics
filter and dimensions match the spans rtguard really sends over OTLP/gRPC."""

from __future__ import annotations

import asyncio
import inspect
import re
import urllib.parse
from typing import Any

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from prometheus_client import CollectorRegistry

from otlp_receiver import OtlpReceiver, ReceivedSpan
from promstack import PROMETHEUS_CONFIG, ROOT, run_session
from rtguard import Agent, function_tool
from rtguard.simulator import CallSpec, Scenario
from rtguard.telemetry import RtguardMetrics, Telemetry, start_metrics_server
from rtguard.telemetry import _names as n

CONFIG_FILE = ROOT / "otel-collector.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
VERSION = "v0.154.0"

# The component types of otelcol-contrib v0.154.0 this config may use, by kind, and the
# names that release deprecated (still accepted as aliases, with a warning).
KNOWN = {
    "receivers": {"otlp", "prometheus"},
    "processors": {"memory_limiter", "filter", "batch"},
    "exporters": {"otlp_grpc", "otlp_http", "prometheus_remote_write", "debug"},
    "connectors": {"span_metrics", "forward"},
    "extensions": {"health_check"},
}
DEPRECATED = {"otlphttp", "spanmetrics", "prometheusremotewrite"}
SIGNALS = {"traces", "metrics", "logs"}


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CONFIG_FILE.read_text())
    return data


def kind_of(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def pipelines(config: dict[str, Any]) -> dict[str, dict[str, list[str]]]:
    result: dict[str, dict[str, list[str]]] = config["service"]["pipelines"]
    return result


def documented_addresses() -> set[str]:
    """The addresses in docs/operations.md's port table."""
    text = OPERATIONS.read_text()
    section = text.split("## Ports", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(127\.0\.0\.1:\d+)`", section))


def test_the_targeted_version_is_stated_in_the_config_and_the_docs() -> None:
    head = CONFIG_FILE.read_text().split("\n\n", 1)[0]
    assert f"opentelemetry-collector-contrib {VERSION}" in head
    docs = OPERATIONS.read_text()
    assert f"contrib {VERSION}" in docs
    assert f"otel/opentelemetry-collector-contrib:{VERSION.lstrip('v')}" in docs


def test_component_names_are_those_of_the_targeted_release(config: dict[str, Any]) -> None:
    for kind, known in KNOWN.items():
        for component_id in config.get(kind) or {}:
            name = kind_of(component_id)
            assert name not in DEPRECATED, f"{component_id}: deprecated name"
            assert name in known, f"{kind}: {component_id} is not a {VERSION} component"
    # The `otlp` name is only the receiver's: the exporter is `otlp_grpc` since v0.144.0.
    assert not any(kind_of(e) == "otlp" for e in config["exporters"])


def test_every_pipeline_references_defined_components(config: dict[str, Any]) -> None:
    connectors = set(config.get("connectors") or {})
    defined = {kind: set(config.get(kind) or {}) for kind in KNOWN}
    used: dict[str, set[str]] = {kind: set() for kind in KNOWN}
    for pipeline_id, pipeline in pipelines(config).items():
        assert kind_of(pipeline_id) in SIGNALS, pipeline_id
        assert pipeline["receivers"], pipeline_id
        assert pipeline["exporters"], pipeline_id
        for receiver in pipeline["receivers"]:
            assert receiver in defined["receivers"] | connectors, (pipeline_id, receiver)
            used["connectors" if receiver in connectors else "receivers"].add(receiver)
        for processor in pipeline.get("processors", []):
            assert processor in defined["processors"], (pipeline_id, processor)
            used["processors"].add(processor)
        for exporter in pipeline["exporters"]:
            assert exporter in defined["exporters"] | connectors, (pipeline_id, exporter)
            used["connectors" if exporter in connectors else "exporters"].add(exporter)
    for extension in config["service"].get("extensions", []):
        assert extension in defined["extensions"], extension
        used["extensions"].add(extension)
    for kind in KNOWN:
        assert defined[kind] == used[kind], f"{kind} defined but never used"


def test_span_metrics_turns_traces_into_metrics(config: dict[str, Any]) -> None:
    as_exporter = {k for k, p in pipelines(config).items() if "span_metrics" in p["exporters"]}
    as_receiver = {k for k, p in pipelines(config).items() if "span_metrics" in p["receivers"]}
    assert as_exporter
    assert as_receiver
    assert {kind_of(k) for k in as_exporter} == {"traces"}
    assert {kind_of(k) for k in as_receiver} == {"metrics"}


def test_memory_limiter_first_and_batching_before_every_export(config: dict[str, Any]) -> None:
    for pipeline_id, pipeline in pipelines(config).items():
        assert pipeline["processors"][0] == "memory_limiter", pipeline_id
    for exporter_id, exporter in config["exporters"].items():
        batching = (exporter.get("sending_queue") or {}).get("batch", None) is not None or (
            exporter.get("remote_write_queue") or {}
        ).get("enabled")
        assert batching, f"{exporter_id} does not batch"


def test_traces_go_to_jaeger_over_otlp_and_metrics_to_prometheus(config: dict[str, Any]) -> None:
    traces = pipelines(config)["traces"]
    assert traces["receivers"] == ["otlp"]
    (jaeger,) = traces["exporters"]
    assert kind_of(jaeger) == "otlp_grpc"
    assert "jaeger" in jaeger
    metrics = pipelines(config)["metrics"]
    assert set(metrics["receivers"]) == {"prometheus/rtguard", "span_metrics"}
    assert metrics["exporters"] == ["prometheus_remote_write"]
    url = urllib.parse.urlsplit(config["exporters"]["prometheus_remote_write"]["endpoint"])
    assert url.path == "/api/v1/write"


def test_ports_match_the_docs(config: dict[str, Any]) -> None:
    documented = documented_addresses()
    protocols = config["receivers"]["otlp"]["protocols"]
    # OTLP's standard ports: what rtguard.telemetry.configure() exports to by default.
    assert protocols["grpc"]["endpoint"] == "127.0.0.1:4317"
    assert protocols["http"]["endpoint"] == "127.0.0.1:4318"
    telemetry = config["service"]["telemetry"]["metrics"]["readers"][0]["pull"]["exporter"]
    remote_write = urllib.parse.urlsplit(
        config["exporters"]["prometheus_remote_write"]["endpoint"]
    ).netloc
    (scrape,) = config["receivers"]["prometheus/rtguard"]["config"]["scrape_configs"]
    (targets,) = scrape["static_configs"]
    addresses = {
        protocols["grpc"]["endpoint"],
        protocols["http"]["endpoint"],
        config["extensions"]["health_check"]["endpoint"],
        f"{telemetry['prometheus']['host']}:{telemetry['prometheus']['port']}",
        config["exporters"]["otlp_grpc/jaeger"]["endpoint"],
        remote_write,
        *targets["targets"],
    }
    assert addresses <= documented, addresses - documented


def test_rtguard_is_scraped_where_it_serves_by_default(config: dict[str, Any]) -> None:
    defaults = inspect.signature(start_metrics_server).parameters
    served = f"{defaults['addr'].default}:{defaults['port'].default}"
    (scrape,) = config["receivers"]["prometheus/rtguard"]["config"]["scrape_configs"]
    assert scrape["static_configs"] == [{"targets": [served]}]
    # The same job name as Prometheus' own scrape job, which the guard alerts match on.
    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert scrape["job_name"] in {job["job_name"] for job in prometheus["scrape_configs"]}
    assert scrape["job_name"] == "rtguard"


def test_span_metrics_buckets_and_dimensions_follow_the_names(config: dict[str, Any]) -> None:
    connector = config["connectors"]["span_metrics"]
    buckets = connector["histogram"]["explicit"]["buckets"]
    assert connector["histogram"]["unit"] == "s"
    assert [int(b.removesuffix("ms")) / 1000 for b in buckets] == list(n.TOOL_DURATION_BUCKETS)
    dimensions = [d["name"] for d in connector["dimensions"]]
    assert dimensions == [n.GEN_AI_TOOL_NAME, n.ERROR_TYPE, n.RTGUARD_OUTCOME]
    assert connector["exemplars"]["enabled"] is True


def test_docs_say_which_programs_cannot_run_here() -> None:
    docs = " ".join(OPERATIONS.read_text().split())
    assert "none of those three runs on this machine" in docs
    assert "no Jaeger, Grafana or OpenTelemetry Collector binary" in docs


# --- the filter and the dimensions against the spans rtguard really sends -------------------


class Broken(RuntimeError):
    pass


@function_tool
async def lookup(key: str) -> str:
    """Look a key up."""
    return key


@function_tool
async def fail() -> str:
    """Always fails."""
    raise Broken("no")


agent = Agent(name="ops", instructions="Operate.", tools=[lookup, fail])


def dropped_by(condition: str, span: ReceivedSpan) -> bool:
    """The filter processor's OTTL condition, for the one form this config uses."""
    match = re.fullmatch(r'attributes\["([^"]+)"\] != "([^"]+)"', condition)
    assert match, f"unexpected filter condition {condition}"
    key, value = match.groups()
    return bool(span.attributes.get(key) != value)


def test_filter_keeps_exactly_the_execute_tool_spans_sent_over_otlp(
    config: dict[str, Any],
) -> None:
    (condition,) = config["processors"]["filter/execute_tool"]["traces"]["span"]
    with OtlpReceiver() as receiver:
        provider = TracerProvider()
        exporter = OTLPSpanExporter(endpoint=receiver.endpoint, insecure=True)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        telemetry = Telemetry(tracer_provider=provider, metrics=RtguardMetrics(CollectorRegistry()))
        calls = (CallSpec("lookup", '{"key": "a"}'), CallSpec("fail"), CallSpec("lookup", "{}"))
        asyncio.run(run_session(Scenario(calls=calls), agent, telemetry))
        provider.shutdown()
        spans = list(receiver.spans)

    kept = [s for s in spans if not dropped_by(condition, s)]
    assert {s.name for s in spans} - {s.name for s in kept} >= {
        n.SPAN_SEND_OUTPUT,
        n.OP_REALTIME_INFERENCE,
    }
    assert len(kept) == len(calls)
    assert all(s.name.startswith(n.OP_EXECUTE_TOOL) for s in kept)
    assert all(s.attributes[n.GEN_AI_OPERATION_NAME] == n.OP_EXECUTE_TOOL for s in kept)
    # Every span_metrics dimension is an attribute of the kept spans (error.type on failures).
    outcomes = sorted(s.attributes[n.RTGUARD_OUTCOME] for s in kept)
    assert outcomes == ["error", "invalid_arguments", "success"]
    assert {s.attributes[n.GEN_AI_TOOL_NAME] for s in kept} == {"lookup", "fail"}
    errors = {
        s.attributes.get(n.ERROR_TYPE) for s in kept if s.attributes[n.RTGUARD_OUTCOME] != "success"
    }
    assert errors == {"Broken", "invalid_arguments"}
