"""Real Prometheus and Alertmanager processes on 127.0.0.1 for the dashboard and alert tests.

Everything here is the real program (the Debian packages' binaries), started on free loopback
ports with short intervals and stopped by its pid. A missing binary fails the test with the
command that installs it: CI installs them, so a skip would hide a broken setup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from rtguard import (
    Agent,
    CallIncomplete,
    OutputAcknowledged,
    RealtimeSession,
    SessionConfig,
    SessionEvent,
)
from rtguard.simulator import Scenario, Simulator
from rtguard.telemetry import RtguardMetrics, Telemetry, start_metrics_server

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
ALERTS = DASHBOARDS / "alerts.yml"
SLO_RULES = DASHBOARDS / "slo.yml"
RULE_FILES = (ALERTS, SLO_RULES)
PROMETHEUS_CONFIG = DASHBOARDS / "prometheus.yml"
ALERTMANAGER_CONFIG = DASHBOARDS / "alertmanager.yml"
INSTALL_HINT = (
    "run scripts/install-system-deps.sh (apt-get install prometheus prometheus-alertmanager)"
)

# Short enough that a scenario's effect reaches an alert in a few seconds.
SCRAPE_INTERVAL = "500ms"


def binary(name: str) -> str:
    """The path of a required program, or a failed test that says how to install it."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}", pytrace=False)
    return path


def run_tool(name: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary(name), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body = response.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Process:
    """A child process on a loopback port, stopped by its pid (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, args: list[str], log: Path, ready_url: str) -> None:
        self.name = name
        self.log = log
        self.ready_url = ready_url
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [binary(name), *args], stdout=out, stderr=subprocess.STDOUT, cwd=log.parent
            )

    def wait_ready(self, timeout: float = 15.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            with urllib.request.urlopen(self.ready_url, timeout=1) as response:
                return bool(response.status == 200)

        wait_until(ready, timeout, f"{self.name} at {self.ready_url}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


class Webhook:
    """A tiny Alertmanager webhook receiver: records every notification's JSON body."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        notifications = self.notifications

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                notifications.append(json.loads(self.rfile.read(length)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/alerts"

    def alerts(self) -> list[dict[str, Any]]:
        return [alert for n in list(self.notifications) for alert in n["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class Stack:
    """rtguard's metrics endpoint, Prometheus scraping it with the shipped rules, Alertmanager
    with the shipped routing sending to a webhook."""

    registry: CollectorRegistry
    metrics_port: int
    prometheus_url: str
    alertmanager_url: str
    webhook: Webhook
    spans: InMemorySpanExporter
    telemetry: Telemetry
    prometheus_log: Path
    processes: list[Process] = field(default_factory=list)

    def query(self, expr: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = http_get(url)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def series(self, match: str) -> list[dict[str, str]]:
        url = f"{self.prometheus_url}/api/v1/series?" + urllib.parse.urlencode({"match[]": match})
        answer = http_get(url)
        assert answer["status"] == "success", answer
        result: list[dict[str, str]] = answer["data"]
        return result

    def exemplars(self, expr: str, since: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": f"{since:.3f}", "end": f"{time.time() + 1:.3f}"}
        url = f"{self.prometheus_url}/api/v1/query_exemplars?" + urllib.parse.urlencode(params)
        answer = http_get(url)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        answer = http_get(f"{self.prometheus_url}/api/v1/rules")
        result: list[dict[str, Any]] = answer["data"]["groups"]
        return result

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        answer = http_get(f"{self.prometheus_url}/api/v1/alerts")
        result: list[dict[str, Any]] = answer["data"]["alerts"]
        return result

    def scrapes(self) -> float:
        """How many times Prometheus has scraped rtguard so far (from its own counter)."""
        answer = self.query('count_over_time(up{job="rtguard"}[1h])')
        return float(answer[0]["value"][1]) if answer else 0.0

    def wait_for_scrapes(self, count: int = 2, timeout: float = 10.0) -> None:
        """Wait until Prometheus has taken ``count`` more scrapes of rtguard's endpoint."""
        target = self.scrapes() + count
        wait_until(lambda: self.scrapes() >= target, timeout, f"{count} scrapes", 0.1)

    def wait_for_target_up(self, timeout: float = 20.0) -> None:
        def up() -> bool:
            return any(r["value"][1] == "1" for r in self.query('up{job="rtguard"}'))

        wait_until(up, timeout, "Prometheus to scrape rtguard")


def prometheus_config(
    metrics_port: int,
    alertmanager_port: int,
    rules: tuple[Path, ...],
    interval: str = SCRAPE_INTERVAL,
) -> dict[str, Any]:
    """The shipped dashboards/prometheus.yml, pointed at this test's ports and files."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(path) for path in rules]
    (alerting,) = config["alerting"]["alertmanagers"]
    alerting["static_configs"] = [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["rtguard"]["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    jobs["rtguard"]["scrape_interval"] = interval
    config["scrape_configs"] = [jobs["rtguard"]]  # only what runs here
    return config


def alertmanager_config(webhook_url: str) -> dict[str, Any]:
    """The shipped dashboards/alertmanager.yml, sending to this test's webhook at once."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    route = config["route"]
    route.update(group_wait="0s", group_interval="1s", repeat_interval="1h")
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = webhook_url
    return config


@contextlib.contextmanager
def stack(tmp: Path, rules: tuple[Path, ...] = RULE_FILES) -> Iterator[Stack]:
    """Start everything on free loopback ports, Prometheus with the shipped rule files (or
    the test's variants of them); stop every process on the way out."""
    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry = Telemetry(tracer_provider=provider, metrics=RtguardMetrics(registry))

    metrics_port = free_port()
    server, thread = start_metrics_server(metrics_port, addr="127.0.0.1", registry=registry)
    webhook = Webhook()
    processes: list[Process] = []
    try:
        am_port = free_port()
        am_config = tmp / "alertmanager.yml"
        am_config.write_text(yaml.safe_dump(alertmanager_config(webhook.url)))
        (tmp / "am-data").mkdir()
        alertmanager = Process(
            "prometheus-alertmanager",
            [
                f"--config.file={am_config}",
                f"--storage.path={tmp / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            tmp / "alertmanager.log",
            f"http://127.0.0.1:{am_port}/-/ready",
        )
        processes.append(alertmanager)

        prom_port = free_port()
        prom_config = tmp / "prometheus.yml"
        prom_config.write_text(yaml.safe_dump(prometheus_config(metrics_port, am_port, rules)))
        prometheus = Process(
            "prometheus",
            [
                f"--config.file={prom_config}",
                f"--storage.tsdb.path={tmp / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--enable-feature=exemplar-storage",
            ],
            tmp / "prometheus.log",
            f"http://127.0.0.1:{prom_port}/-/ready",
        )
        processes.append(prometheus)
        alertmanager.wait_ready()
        prometheus.wait_ready()
        yield Stack(
            registry=registry,
            metrics_port=metrics_port,
            prometheus_url=f"http://127.0.0.1:{prom_port}",
            alertmanager_url=f"http://127.0.0.1:{am_port}",
            webhook=webhook,
            spans=exporter,
            telemetry=telemetry,
            prometheus_log=tmp / "prometheus.log",
            processes=processes,
        )
    finally:
        for process in reversed(processes):
            process.stop()
        webhook.close()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        provider.shutdown()


@dataclass
class SessionRun:
    events: list[SessionEvent]
    sim: Simulator


async def run_session(
    scenario: Scenario,
    agent: Agent,
    telemetry: Telemetry,
    *,
    config: SessionConfig | None = None,
    settled: int | None = None,
    timeout: float = 10.0,
) -> SessionRun:
    """Run a session against the simulator until ``settled`` calls (default: all) have been
    acknowledged or reported incomplete, then close it."""
    want = len(scenario.calls) if settled is None else settled
    events: list[SessionEvent] = []
    async with Simulator(scenario) as sim:
        session = RealtimeSession(agent, url=sim.url, config=config, telemetry=telemetry)
        async with session:

            async def consume() -> None:
                async for event in session:
                    events.append(event)

            consumer = asyncio.create_task(consume())
            async with asyncio.timeout(timeout):
                while (
                    sum(isinstance(e, OutputAcknowledged | CallIncomplete) for e in events) < want
                ):
                    await asyncio.sleep(0.01)
        await asyncio.wait_for(consumer, timeout)
    return SessionRun(events, sim)
