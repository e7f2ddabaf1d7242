"""docs/benchmarks.md from the results of one run: machine and versions, the targets and how
far each one is, then every table. Nothing here is typed in by hand: every figure comes from
the run's measurements."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path

import psutil

from .completion import CASES, CompletionResult
from .latency import LatencyResult
from .memory import MemoryResult
from .profiles import ProfileResult
from .telemetry_cost import KINDS, TelemetryResult
from .throughput import CLIENT_LABELS, ThroughputResult
from .voice import LABELS as VOICE_LABELS
from .voice import VoiceResult

__all__ = ["Environment", "Results", "environment", "render"]

PACKAGES = (
    "rtguard",
    "openai-agents",
    "openai",
    "websockets",
    "orjson",
    "pydantic",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-grpc",
    "grpcio",
    "prometheus-client",
    "pyinstrument",
    "psutil",
)


# "Flat": over the second half of the run, fewer than 0.1 live objects and 100 bytes of RSS
# gained per call (a per-call leak is at least one object per call).
FLAT_OBJECTS_PER_CALL = 0.1
FLAT_RSS_BYTES = 100
# Voice soak: flat means RSS grew under 0.5 KiB per session per minute over its second half.
FLAT_KIB_PER_SESSION_MINUTE = 0.5


@dataclass(frozen=True)
class Environment:
    cpu: str
    cores: int
    memory_gib: float
    system: str
    python: str
    commit: str
    load_before: tuple[float, float, float]
    versions: dict[str, str]
    load_after: tuple[float, float, float] | None = None


@dataclass
class Results:
    command: str
    quick: bool
    started: datetime
    env: Environment
    duration: float = 0.0
    throughput: ThroughputResult | None = None
    latency: LatencyResult | None = None
    completion: CompletionResult | None = None
    telemetry: TelemetryResult | None = None
    memory: MemoryResult | None = None
    profiles: ProfileResult | None = None
    voice: VoiceResult | None = None
    log: list[str] = field(default_factory=list)


def environment(repo: Path) -> Environment:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    commit = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        commit = f"{head}{' (src/ modified)' if dirty else ''}" if head else commit
    return Environment(
        cpu=cpu,
        cores=os.cpu_count() or 0,
        memory_gib=psutil.virtual_memory().total / 2**30,
        system=platform.platform(),
        python=platform.python_version(),
        commit=commit,
        load_before=os.getloadavg(),
        versions=versions,
    )


# --- formatting ------------------------------------------------------------------------------


def _n(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def _x(value: float) -> str:
    return "n/a" if math.isnan(value) or math.isinf(value) else f"{value:.1f}x"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.0%}"


def _div(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


# --- targets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    measured: str
    met: bool | None  # None: not measured in this run


def targets(r: Results) -> list[Target]:
    out: list[Target] = []
    if r.completion is not None:
        rt = [c for c in r.completion.results if c.client == "rtguard"]
        sdk = [c for c in r.completion.results if c.client != "rtguard"]
        rt_ok = all(c.answered == c.issued == c.scenario_calls for c in rt)
        rt_answered = sum(c.answered for c in rt)
        rt_total = sum(c.scenario_calls for c in rt)
        sdk_left = sum(c.unanswered for c in sdk)
        sdk_never = sum(c.never_issued for c in sdk)
        out.append(
            Target(
                "Completion: 100% of calls get an output in every failure scenario",
                f"rtguard {rt_answered}/{rt_total} calls answered in {len(rt)} scenarios; "
                f"openai-agents left {sdk_left} issued calls without output and {sdk_never} "
                "more were never issued because the session had closed",
                rt_ok,
            )
        )
    tp = r.throughput
    if tp is not None:
        size = 4_000 if 4_000 in tp.sizes else tp.sizes[-1]
        on, sdk_m = tp.median("rtguard-on", size), tp.median("sdk", size)
        if on and sdk_m:
            ratio = _div(on.calls_per_second, sdk_m.calls_per_second)
            out.append(
                Target(
                    f"Throughput, spans + metrics on: at least 10x the SDK's calls/s at "
                    f"{size:,} calls",
                    f"{_x(ratio)} ({_n(on.calls_per_second)} vs {_n(sdk_m.calls_per_second)} "
                    f"calls/s; CPU per call {_x(_div(sdk_m.cpu_us_per_call, on.cpu_us_per_call))}"
                    " less)"
                    + (
                        f"; the SDK ran only {sdk_m.requested:,} calls"
                        if sdk_m.requested < size
                        else ""
                    ),
                    ratio >= 10,
                )
            )
        rates = [(s, tp.median("rtguard-on", s)) for s in tp.sizes]
        values = [(s, m.calls_per_second) for s, m in rates if m]
        if len(values) > 1:
            low = min(values, key=lambda v: v[1])
            high = max(values, key=lambda v: v[1])
            out.append(
                Target(
                    f"Throughput, spans + metrics on: within 10% of itself from "
                    f"{tp.sizes[0]:,} to {tp.sizes[-1]:,} calls",
                    f"lowest {_n(low[1])} calls/s at {low[0]:,}, highest {_n(high[1])} at "
                    f"{high[0]:,}: the lowest is {_pct(1 - low[1] / high[1])} below the highest"
                    + _within_session(tp),
                    low[1] >= 0.9 * high[1],
                )
            )
        raw = [tp.median("raw", s) for s in tp.sizes]
        ons = [tp.median("rtguard-on", s) for s in tp.sizes]
        offs = [tp.median("rtguard-off", s) for s in tp.sizes]
        if all(raw) and all(ons) and all(offs):
            headroom = min(
                _div(a.calls_per_second, b.calls_per_second)
                for a, b in zip(raw, ons, strict=True)
                if a and b
            )
            sim_busy_on = max(m.sim_busy for m in ons if m)
            sim_busy_off = max(m.sim_busy for m in offs if m)
            out.append(
                Target(
                    "The simulator is not the bottleneck (its ceiling: a raw WebSocket client)",
                    f"raw client at least {_x(headroom)} rtguard's calls/s (spans + metrics) at "
                    f"every N; simulator CPU at most {_pct(sim_busy_on)} of a core during "
                    f"those runs ({_pct(sim_busy_off)} with rtguard's telemetry off)",
                    headroom > 1.1 and sim_busy_on < 0.9,
                )
            )
    if r.latency is not None:
        on = r.latency.runs.get("rtguard-on")
        sdk_l = r.latency.runs.get("sdk")
        if on and sdk_l:
            out.append(
                Target(
                    f"p99 latency at {r.latency.rate:.0f} calls/s under 5 ms and at most half "
                    "the SDK's",
                    f"rtguard (spans + metrics) p99 {on.p99_ms:.2f} ms; SDK p99 "
                    f"{sdk_l.p99_ms:.2f} ms (ratio {_div(on.p99_ms, sdk_l.p99_ms):.2f})",
                    on.p99_ms < 5 and on.p99_ms <= sdk_l.p99_ms / 2,
                )
            )
    if r.telemetry is not None:
        off, full = r.telemetry.median("off"), r.telemetry.median("spans+metrics")
        otlp = r.telemetry.median("otlp")
        if off and full:
            # Judged on CPU per call, what a client bound by its CPU loses in calls/s: the
            # measured calls/s understate it when the simulator caps the runs without telemetry.
            cost = _cpu_bound_loss(off.cpu_us_per_call, full.cpu_us_per_call)
            measured = 1 - full.calls_per_second / off.calls_per_second
            extra = (
                f" (measured: {_pct(measured)} of calls/s, the simulator at "
                f"{_pct(off.sim_busy)} of a core in the runs without telemetry)"
            )
            if otlp:
                extra += (
                    f"; with OTLP export "
                    f"{_pct(_cpu_bound_loss(off.cpu_us_per_call, otlp.cpu_us_per_call))}"
                )
            floor = r.telemetry.floor
            if floor:
                sdk_cost = _cpu_bound_loss(off.cpu_us_per_call, off.cpu_us_per_call + floor.sdk_us)
                extra += (
                    f"; the SDKs' own work for the same spans and samples would cost "
                    f"{_pct(sdk_cost)} with a free observer ([floor](#telemetry-cost))"
                )
            out.append(
                Target(
                    "Tool-call path: every call traced and every metric on costs at most 15% "
                    "of calls/s against telemetry off",
                    f"spans + metrics take {_n(full.cpu_us_per_call)} vs "
                    f"{_n(off.cpu_us_per_call)} us CPU per call: a client bound by its CPU "
                    f"loses {_pct(cost)} of calls/s{extra}",
                    cost <= 0.15,
                )
            )
    if r.memory is not None and r.memory.runs:
        m = r.memory.runs[0]
        flat = m.objects_per_call < FLAT_OBJECTS_PER_CALL and m.rss_bytes_per_call < FLAT_RSS_BYTES
        out.append(
            Target(
                f"Memory flat over {m.calls:,} calls",
                f"{m.client}: peak RSS {m.peak_rss_bytes / 2**20:.0f} MiB; over the second half "
                f"RSS grows {_n(m.rss_bytes_per_call)} B/call and live objects "
                f"{m.objects_per_call:.2f}/call",
                flat,
            )
        )
    if r.voice is not None:
        out += _voice_targets(r.voice)
    return out


def _voice_targets(v: VoiceResult) -> list[Target]:
    out = []
    cpu = []
    for size in (250, 400):
        ratios = v.of_raw("rtguard-on", size)
        if ratios:
            median = statistics.median(ratios)
            each = " / ".join(f"{r:.2f}" for r in ratios)
            runs = v.rounds("raw", size) + v.rounds("rtguard-on", size)
            saturated = "" if all(m.kept_up for m in runs) else ", not every run kept up"
            cpu.append((median, f"{size}: {median:.2f}x ({each}{saturated})"))
    if cpu:
        rounds = max(len(v.rounds("rtguard-on", size)) for size in (250, 400))
        out.append(
            Target(
                "Voice: client CPU per session-second with spans + metrics at most 1.10x the "
                "raw client's, at 250 and 400 sessions",
                f"median of {rounds} interleaved rounds (each round's ratio) "
                + "; ".join(text for _, text in cpu),
                all(ratio <= 1.10 for ratio, _ in cpu),
            )
        )
    on400, raw400 = v.rounds("rtguard-on", 400), v.rounds("raw", 400)
    if on400:
        lag = statistics.median(m.stats.lag_p99 for m in on400)
        each = " / ".join(f"{m.stats.lag_p99 * 1e3:.1f}" for m in on400)
        floor = (
            f"; raw client {statistics.median(m.stats.lag_p99 for m in raw400) * 1e3:.1f} ms"
            if raw400
            else ""
        )
        out.append(
            Target(
                "Voice: audio lag p99 under 5 ms at 400 sessions on one core (spans + metrics)",
                f"median of {len(on400)} rounds {lag * 1e3:.1f} ms ({each}; client CPU "
                f"{_pct(on400[0].client_busy)} of a core in the sweep){floor}",
                lag < 0.005,
            )
        )
    raw_soak = next((m for m in v.soak if m.kind == "raw"), None)
    for m in v.soak:
        if m.kind == "rtguard-on" and raw_soak is not None:
            beyond = (m.bytes_per_session - raw_soak.bytes_per_session) / 1024
            growth = m.rss_growth_per_minute / m.sessions / 1024
            out.append(
                Target(
                    "Voice: telemetry and ledger state under 64 KiB per session beyond the raw "
                    f"client, flat over a {m.stats.wall_seconds / 60:.0f}-minute run",
                    f"{beyond:.0f} KiB per session beyond raw at the end; over the second "
                    f"half RSS grew {growth:.2f} KiB per session per minute (raw "
                    f"{raw_soak.rss_growth_per_minute / raw_soak.sessions / 1024:.2f})",
                    beyond < 64 and growth < FLAT_KIB_PER_SESSION_MINUTE,
                )
            )
    return out


def _within_session(tp: ThroughputResult) -> str:
    m = tp.median("rtguard-on", tp.sizes[-1])
    if m is None or math.isnan(m.first_decile_cps):
        return ""
    return (
        f"; within the {m.requested:,}-call session the last tenth ran at "
        f"{_pct(_div(m.last_decile_cps, m.first_decile_cps))} of the first tenth's rate"
    )


# --- sections --------------------------------------------------------------------------------


def _header(r: Results) -> list[str]:
    e = r.env
    mode = " (quick: small N, not the published figures)" if r.quick else ""
    lines = [
        "# Benchmarks: rtguard and the OpenAI Agents SDK's realtime session",
        "",
        f"Generated by `{r.command}` on {r.started:%Y-%m-%d %H:%M} UTC{mode}; the run took "
        f"{r.duration / 60:.1f} min. Do not edit by hand: rerun the command.",
        "",
        "Both clients talk to the same rtguard simulator (`rtguard.simulator`, a real WebSocket "
        "server on 127.0.0.1) in the same run. Figures are ratios measured in one run on a "
        "shared, noisy 2-core machine: compare columns within a table, not with other runs.",
        "",
        "## How to run",
        "",
        "```sh",
        "make bench                             # = .venv/bin/python -m benchmarks",
        ".venv/bin/python -m benchmarks --quick  # small N, a smoke run (under a minute)",
        ".venv/bin/python -m benchmarks --only throughput   # one benchmark, printed",
        "```",
        "",
        "Needs the `bench` extra (`pip install -e '.[bench,dev]'`: openai-agents, psutil, "
        "pyinstrument; grpcio and opentelemetry-proto for the OTLP receiver). The benchmarks "
        "are not part of the test suite. `--only NAME` (throughput, latency, completion, "
        "telemetry, memory, profile, voice) and `--quick` print their tables instead of "
        "rewriting this file (`--output PATH` writes them anywhere); `--only voice --quick` "
        "takes under a minute.",
        "",
        "## Machine and versions",
        "",
    ]
    rows = [
        ["CPU", f"{e.cpu}, {e.cores} cores"],
        ["memory", f"{e.memory_gib:.1f} GiB"],
        ["system", e.system],
        ["Python", e.python],
        ["rtguard commit", e.commit],
        ["load average before the run", ", ".join(f"{v:.2f}" for v in e.load_before)],
        [
            "load average after the run",
            ", ".join(f"{v:.2f}" for v in e.load_after) if e.load_after else "n/a",
        ],
    ]
    rows += [[name, version] for name, version in e.versions.items()]
    return lines + _table(["", ""], rows)


def _targets(r: Results) -> list[str]:
    lines = ["## Targets", ""]
    rows = []
    for t in targets(r):
        verdict = "not measured" if t.met is None else ("**met**" if t.met else "**missed**")
        rows.append([t.name, t.measured, verdict])
    return lines + _table(["target", "measured in this run", ""], rows)


def _throughput(tp: ThroughputResult) -> list[str]:
    lines = [
        "## Throughput",
        "",
        "N trivial calls (`echo`), one call per model response, issued as fast as the client "
        "keeps up: the simulator keeps at most 32 calls without output. calls/s = calls "
        "answered / (last output - first call issued), on the simulator's clock; median of "
        "the repeats "
        + ", ".join(
            f"{s:,}: {1 if len(tp.runs.get(('raw', s), [])) < 2 else len(tp.runs[('raw', s)])}"
            for s in tp.sizes
        )
        + " runs, interleaved across clients (short runs are the most exposed to the "
        "machine's noise: see the spread). The simulator and each client kind run in their "
        "own processes.",
        "",
    ]
    header = [
        "N",
        *[CLIENT_LABELS[k] for k in CLIENT_LABELS],
        "rtguard on / SDK",
        "rtguard on / raw",
    ]
    rows = []
    for size in tp.sizes:
        cells = [f"{size:,}"]
        medians = {k: tp.median(k, size) for k in CLIENT_LABELS}
        for kind, m in medians.items():
            if m is None:
                cells.append("n/a")
                continue
            text = _n(m.calls_per_second)
            if kind == "sdk" and m.requested < size:
                text += f" (capped at {m.requested:,} calls)"
            spread = tp.spread(kind, size)
            if spread >= 0.2:
                text += f" (runs spread {spread:.0%})"
            cells.append(text)
        on, sdk, raw = medians["rtguard-on"], medians["sdk"], medians["raw"]
        cells.append(_x(_div(on.calls_per_second, sdk.calls_per_second)) if on and sdk else "n/a")
        cells.append(_x(_div(on.calls_per_second, raw.calls_per_second)) if on and raw else "n/a")
        rows.append(cells)
    lines += _table(header, rows)
    lines += [
        "CPU time of the client process per call (all its threads, including the span export "
        "thread), and how busy each process was (CPU seconds per wall second, 100% = one core). "
        "A client near 100% is the bottleneck; a simulator near 100% means the simulator is. "
        "CPU times are read with 10 ms resolution, so the shortest runs are approximate (a "
        "reading above 100% is one of those).",
        "",
    ]
    header = ["N", *[f"{CLIENT_LABELS[k]}: us/call (client / sim busy)" for k in CLIENT_LABELS]]
    rows = []
    for size in tp.sizes:
        cells = [f"{size:,}"]
        for kind in CLIENT_LABELS:
            m = tp.median(kind, size)
            cells.append(
                "n/a"
                if m is None
                else f"{_n(m.cpu_us_per_call)} ({_pct(m.client_busy)} / {_pct(m.sim_busy)})"
            )
        rows.append(cells)
    lines += _table(header, rows)
    issues = []
    for (kind, size), runs in sorted(tp.runs.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        for m in runs:
            if m.answered != m.requested or m.duplicated:
                issues.append(
                    f"{CLIENT_LABELS[kind]} at {size:,}: {m.answered}/{m.requested} answered, "
                    f"{m.duplicated} with two outputs"
                )
    largest = tp.sizes[-1]
    rows = []
    for kind in CLIENT_LABELS:
        m = tp.median(kind, largest)
        if m is None:
            continue
        rows.append(
            [
                CLIENT_LABELS[kind],
                f"{m.requested:,}",
                _n(m.first_decile_cps),
                _n(m.last_decile_cps),
                _pct(_div(m.last_decile_cps, m.first_decile_cps)),
            ]
        )
    lines += [
        f"Within one session (the median run at N = {largest:,}): calls/s over the first and "
        "the last tenth of the calls, on the simulator's clock.",
        "",
        *_table(["client", "calls", "first 10%", "last 10%", "last / first"], rows),
    ]
    sdk_big = [m for (k, s), runs in tp.runs.items() if k == "sdk" for m in runs if m.requested < s]
    if sdk_big:
        lines += [
            f"The SDK runs at most {tp.sdk_cap:,} calls: its cost per call grows with the "
            "length of the session (its CPU per call above, the profile below), so a longer run "
            "would mostly measure that growth and take many minutes. Its row for larger N is its "
            "rate at the cap, which flatters it.",
            "",
        ]
    if issues:
        lines += ["Runs where not every call got exactly one output: " + "; ".join(issues), ""]
    responses = []
    for kind in CLIENT_LABELS:
        m = tp.median(kind, tp.sizes[-1])
        if m:
            responses.append(
                f"{CLIENT_LABELS[kind]} {m.response_creates / max(1, m.answered):.2f} "
                f"response.create per call ({m.refused_response_creates} refused), "
                f"{m.session_updates} session.update, {m.server_errors} server `error` events"
            )
    lines += [f"Protocol work at N = {tp.sizes[-1]:,}: " + "; ".join(responses) + ".", ""]
    return lines


def _latency(lat: LatencyResult) -> list[str]:
    lines = [
        "## Latency",
        "",
        f"{lat.calls:,} calls issued at a fixed {lat.rate:.0f} calls/s (open loop, one call "
        "per response). Latency: from the simulator issuing a call (before its frames are "
        "sent) to the simulator receiving its output.",
        "",
    ]
    rows = []
    for kind, m in lat.runs.items():
        rows.append(
            [
                CLIENT_LABELS[kind],
                f"{m.p50_ms:.2f}",
                f"{m.p95_ms:.2f}",
                f"{m.p99_ms:.2f}",
                f"{m.max_ms:.2f}",
                f"{m.answered:,}/{m.requested:,}",
                _pct(m.client_busy),
            ]
        )
    return lines + _table(
        ["client", "p50 ms", "p95 ms", "p99 ms", "max ms", "answered", "client CPU busy"], rows
    )


def _completion(comp: CompletionResult) -> list[str]:
    lines = [
        "## Failure completion",
        "",
        "Each scenario: 20 calls at 100 calls/s, alternating `echo` with the failing call (10 "
        "failing calls); in the send-failure scenario every call is an `echo` whose first "
        "`function_call_output` send raises (a transport wrapper for rtguard, a wrapper "
        "around the SDK's websockets connection). Both libraries get the same tools under the "
        "same names. *answered*: calls the simulator received an output for. *left without "
        "output*: issued calls that never got one (the model would wait forever). *never "
        "issued*: the session had closed, so the rest of the scenario never happened. *app "
        "got the error*: failing calls whose exception reached the app through the library's "
        "API as an exception object (for a tool, handoff or send failure: the very object "
        "that was raised).",
        "",
    ]
    by_case = {c.key: c for c in CASES}
    rows = []
    for r in comp.results:
        case = by_case[r.case]
        note = case.rtguard_note if r.client == "rtguard" else case.sdk_note
        title = case.title + (f" ({note})" if note else "")
        got = f"{r.error_objects}/{r.failing_calls}"
        if r.same_object:
            got += ", same object"
        if r.received_twice:
            got += f", {r.received_twice} twice"
        how = ", ".join(r.channels) or "no (not through the API)"
        if r.text_only:
            how += f"; {r.text_only} text-only error events"
        rows.append(
            [
                title,
                r.client,
                f"{r.answered}/{r.issued}",
                str(r.unanswered),
                str(r.never_issued),
                str(r.without_response_create),
                got,
                how,
            ]
        )
    errors = [r for r in comp.results if r.server_errors]
    notes = [
        f"{r.client} in {by_case[r.case].title!r}: {len(r.server_errors)} "
        f"({'; '.join(sorted(set(r.server_errors))[:3])})"
        for r in errors
    ]
    footer = [
        "Server `error` events in these scenarios: "
        + ("; ".join(notes) if notes else "none, for either client")
        + ".",
        "",
        "Why the SDK (openai-agents 0.24.0, from its source): with "
        "`failure_error_function=None`, a `raise_exception` timeout or a failing "
        "`on_handoff`, the tool task's exception is stored, the session closes and the "
        "iterator raises it, so the failing call and the calls in flight get no output and "
        "the rest of the conversation is lost. The default failure handler and "
        "`error_as_result` send the model an error text, but the app only sees it in the "
        "log. An unknown tool gets an output but no `response.create`. A failed output send "
        "is cached and only sent again if the model repeats the same call.",
        "",
    ]
    return (
        lines
        + _table(
            [
                "scenario",
                "client",
                "answered / issued",
                "left without output",
                "never issued",
                "output not followed by response.create",
                "app got the error",
                "how",
            ],
            rows,
        )
        + footer
    )


def _cpu_bound_loss(off_us: float, on_us: float) -> float:
    """The share of its calls/s a client bound by its CPU loses when a call takes ``on_us``
    of CPU instead of ``off_us``."""
    return 1 - off_us / on_us


def _telemetry(tel: TelemetryResult) -> list[str]:
    lines = [
        "## Telemetry cost",
        "",
        f"rtguard, {tel.calls:,} calls closed loop, median of {len(tel.runs.get('off', []))} "
        "interleaved runs per set-up. *off*: `Telemetry.disabled()`. *spans+metrics*: an SDK "
        "`TracerProvider` with a `BatchSpanProcessor` (its exporter does no I/O) and "
        "`RtguardMetrics` in a private registry. *otlp*: the same with the OTLP/gRPC exporter "
        "to a receiver on 127.0.0.1 in another process (grpcio + opentelemetry-proto's "
        "`TraceServiceServicer`).",
        "",
    ]
    off = tel.median("off")
    rows = []
    for kind in KINDS:
        m = tel.median(kind)
        if m is None:
            continue
        rel = _pct(_div(m.calls_per_second, off.calls_per_second)) if off else "n/a"
        rows.append(
            [
                kind,
                _n(m.calls_per_second),
                rel,
                _n(m.cpu_us_per_call),
                _n(m.gc_us_per_call),
                str(m.gc_full),
                f"{m.spans / max(1, m.answered):.1f}",
            ]
        )
    lines += _table(
        [
            "set-up",
            "calls/s",
            "of telemetry off",
            "client us CPU/call",
            "of which GC us/call",
            "full GCs",
            "spans/call",
        ],
        rows,
    )
    if tel.spans_ended:
        lines += [
            f"OTLP: the receiver decoded {tel.spans_received:,} of the {tel.spans_ended:,} spans "
            f"rtguard ended ({_pct(tel.spans_received / tel.spans_ended)}); the "
            "BatchSpanProcessor drops spans when its queue (2,048) is full.",
            "",
        ]
    floor = tel.floor
    if floor is not None:
        added = floor.on_us - floor.off_us
        lines += [
            "The floor under that cost, without sockets (`benchmarks.hooks.telemetry_floor`, "
            "best of interleaved runs): the session core deciding one call's life costs "
            f"{floor.off_us:.0f} us of CPU with telemetry off and {floor.on_us:.0f} with spans "
            f"and metrics, {added:.0f} us more. Making the same spans (names, kinds, parents, "
            "attributes, events, status) and the same metric samples directly with the "
            "OpenTelemetry SDK and prometheus_client, recorded from rtguard's run and made again "
            "after each call of the core with telemetry off (no observer; the core and the SDKs "
            f"share the caches as with one), adds {floor.sdk_us:.0f} us per call: "
            f"{_pct(floor.sdk_share)} "
            "of what telemetry adds is the SDKs' own work, the rest rtguard's observer. Added "
            f"to telemetry off's {_n(off.cpu_us_per_call) if off else 'n/a'} us per call on "
            "the socket, that work alone would take the share of calls/s the target row "
            "says; only fewer spans per call (sampling) lowers that floor, a faster observer "
            "only the rest. The target is judged on CPU per call, as the floor is: a client "
            "bound by its CPU loses calls/s in proportion, while the measured calls/s "
            "understate the cost when the simulator, not the client, caps the runs without "
            "telemetry.",
            "",
        ]
    return lines


def _memory(mem: MemoryResult) -> list[str]:
    lines = [
        "## Memory",
        "",
        "The client in a fresh process; RSS sampled every 5% of the calls, live objects "
        "(`gc.get_objects()` after a collection) at 25/50/75/100%. Growth is the "
        "least-squares slope over the second half of the run; flat means under "
        f"{FLAT_OBJECTS_PER_CALL} objects and {FLAT_RSS_BYTES} bytes of RSS per call.",
        "",
    ]
    rows = []
    for m in mem.runs:
        mib = [f"{m.rss_at(f) / 2**20:.0f}" for f in (0.1, 0.5, 1.0)]
        objects = [s.objects for s in m.samples if s.objects is not None]
        rows.append(
            [
                m.client,
                f"{m.answered:,}/{m.calls:,}",
                " / ".join(mib),
                f"{m.peak_rss_bytes / 2**20:.0f}",
                _n(m.rss_bytes_per_call),
                f"{m.objects_per_call:.2f}",
                " / ".join(f"{o:,}" for o in objects),
            ]
        )
    return lines + _table(
        [
            "client",
            "answered",
            "RSS MiB at 10% / 50% / 100%",
            "peak RSS MiB",
            "RSS growth B/call",
            "objects/call",
            "live objects at 25/50/75/100%",
        ],
        rows,
    )


def _profiles(prof: ProfileResult) -> list[str]:
    lines = [
        "## Profiles",
        "",
        "pyinstrument (1 ms sampling) on the client's event-loop thread during a "
        "closed-loop run. Shares are of the loop's busy time (time outside the selector wait); "
        "groups count a function with everything it calls. The profiler slows the client "
        "down, so the calls/s here are lower than above.",
        "",
    ]
    for run in prof.runs:
        lines += [
            f"### {run.client}, {run.calls:,} calls ({_n(run.calls_per_second)} calls/s under "
            f"the profiler, {run.busy_seconds:.2f} s busy)",
            "",
        ]
        lines += _table(
            ["group", "share of busy time"],
            [[g, _pct(v)] for g, v in run.groups.items()],
        )
        lines += _table(
            ["function (own time, top)", "own", "with callees"],
            [[f"`{e.function}`", _pct(e.self_share), _pct(e.inclusive)] for e in run.entries],
        )
    return lines


def _voice(v: VoiceResult) -> list[str]:
    from .voice import (
        CALL_EVERY,
        GC_THRESHOLDS,
        GC_TUNED,
        KEPT_UP_LAG,
        SESSIONS_PER_SIMULATOR,
        SPEAK_SECONDS,
    )

    # by S, then in the order of the labels (raw first): both tables list the runs so
    runs = sorted(v.runs.items(), key=lambda kv: (kv[0][1], list(VOICE_LABELS).index(kv[0][0])))
    lines = [
        "## Voice sessions",
        "",
        f"S concurrent sessions in one client process, measured over {v.seconds:.0f} s after a "
        f"{v.warmup:.0f}-s warm-up. Each session gets a tool call (`echo`) every "
        f"{CALL_EVERY:.0f} s, and the model answers each output by speaking for "
        f"{SPEAK_SECONDS:.0f} s at real-time pace: a `response.output_audio.delta` every 20 ms "
        "(960 bytes of PCM16 at 24 kHz, base64), with a transcript delta every 300 ms. The app "
        "iterates every event and decodes every audio chunk, as it must to play it. Each "
        "chunk carries the simulator's send time (`Scenario(stamp_audio=True)`); *audio lag* "
        "is when the app saw it minus that time. Sessions are spread over simulator processes "
        f"(one per {SESSIONS_PER_SIMULATOR} sessions), which report their own CPU and how "
        "far behind the real-time schedule they sent a chunk (a client that stops reading "
        "holds its audio back too). *Kept up*: audio lag p99 under "
        f"{KEPT_UP_LAG * 1e3:.0f} ms, the simulators on schedule (p99 under "
        f"{KEPT_UP_LAG * 1e3:.0f} ms), no event dropped and every call answered exactly once. "
        "A kind that did not keep up at some S is not run at larger S. Each run has a fresh "
        "client process. CPU per session-second is the client process's CPU time (all its "
        "threads) over the window divided by S and the window; a client that did not keep "
        "up used at most a core and did less of the work, so compare CPU per audio chunk "
        "there. The machine has 2 cores: the client and the simulators share them. "
        f"*{VOICE_LABELS[GC_TUNED]}*: the same client in a process that called `gc.freeze()` "
        f"after start-up and `gc.set_threshold{GC_THRESHOLDS}`, as docs/operations.md "
        "advises a host of many sessions; every other kind runs with Python's defaults.",
        "",
    ]
    rows = []
    for (kind, size), m in runs:
        raw = v.runs.get(("raw", size))
        s = m.stats
        rows.append(
            [
                f"{size}",
                VOICE_LABELS[kind],
                f"{m.cpu_per_session_second * 1e3:.2f}",
                _x(_div(m.cpu_per_session_second, raw.cpu_per_session_second)) if raw else "n/a",
                _n(_div(s.cpu_seconds, s.lag_chunks) * 1e6),
                _pct(m.client_busy),
                f"{s.lag_p50 * 1e3:.1f} / {s.lag_p99 * 1e3:.1f} / {s.lag_max * 1e3:.0f}",
                f"{m.answered:,}/{m.issued:,}"
                + (f", {s.dropped:,} events dropped" if s.dropped else ""),
                f"{m.output_p50 * 1e3:.1f} / {m.output_p99 * 1e3:.1f}",
                f"{_pct(m.sim_busy)} x{m.simulators} / {m.sim_late_p99 * 1e3:.0f}",
                "yes" if m.kept_up else "**no**",
            ]
        )
    lines += _table(
        [
            "S",
            "client",
            "CPU ms per session-s",
            "of raw",
            "CPU us per audio chunk",
            "client busy",
            "audio lag p50 / p99 / max ms",
            "calls answered",
            "time to output p50 / p99 ms",
            "simulator busy (each) / behind p99 ms",
            "kept up",
        ],
        rows,
    )
    kept = [
        f"{VOICE_LABELS[k]} {v.largest_kept_up(k) or 'none'}"
        for k in VOICE_LABELS
        if any(key[0] == k for key in v.runs)
    ]
    lines += ["Largest S kept up: " + "; ".join(kept) + ".", ""]
    if v.skipped:
        lines += [
            "Not run: "
            + "; ".join(
                f"{VOICE_LABELS[k]} at {s} (fell behind at {at})"
                for (k, s), at in sorted(v.skipped.items(), key=lambda kv: (kv[0][1], kv[0][0]))
            )
            + ".",
            "",
        ]
    if v.later_rounds:
        lines += _voice_rounds(v)
    lines += [
        "Memory and garbage collection in the same runs: RSS after the first session opened "
        "and at the end of the window, what each further session added, growth over the "
        "second half of the window, the process's peak (VmHWM), and the collections during "
        "the window.",
        "",
    ]
    rows = []
    for (kind, size), m in runs:
        raw = v.runs.get(("raw", size))
        gc = m.stats.gc
        rows.append(
            [
                f"{size}",
                VOICE_LABELS[kind],
                f"{m.stats.rss_first / 2**20:.0f} / {m.stats.rss[-1][1] / 2**20:.0f}",
                f"{m.bytes_per_session / 1024:.0f}",
                f"{(m.bytes_per_session - raw.bytes_per_session) / 1024:+.0f}" if raw else "n/a",
                f"{m.rss_growth_per_minute / 2**20:+.1f}",
                f"{m.stats.peak_rss / 2**20:.0f}",
                f"{gc.collections:,} ({gc.full} full), "
                f"{gc.seconds / m.stats.wall_seconds * 1e3:.1f} ms/s, "
                f"longest {gc.longest * 1e3:.1f} ms",
            ]
        )
    lines += _table(
        [
            "S",
            "client",
            "RSS MiB first / end",
            "KiB per session",
            "beyond raw KiB",
            "growth MiB/min",
            "peak RSS MiB",
            "GC: collections, time, longest pause",
        ],
        rows,
    )
    if v.soak:
        raw = next((m for m in v.soak if m.kind == "raw"), None)
        lines += [
            f"### Over {v.soak[0].stats.wall_seconds / 60:.0f} minutes",
            "",
            f"{v.soak[0].sessions} sessions per kind, the kinds side by side (each with its own "
            "simulator process), RSS sampled every 10 s. Growth: least-squares slope over the "
            "second half, per session.",
            "",
        ]
        rows = []
        for m in v.soak:
            rows.append(
                [
                    VOICE_LABELS[m.kind],
                    f"{m.stats.rss_first / 2**20:.0f} / {m.stats.rss[-1][1] / 2**20:.0f}",
                    f"{m.bytes_per_session / 1024:.0f}",
                    f"{(m.bytes_per_session - raw.bytes_per_session) / 1024:+.0f}"
                    if raw
                    else "n/a",
                    f"{m.rss_growth_per_minute / m.sessions / 1024:+.2f}",
                    f"{m.answered:,}/{m.issued:,}",
                    f"{m.stats.lag_p99 * 1e3:.1f}",
                    f"{m.stats.gc.longest * 1e3:.1f}",
                ]
            )
        lines += _table(
            [
                "client",
                "RSS MiB first / end",
                "KiB per session at the end",
                "beyond raw KiB",
                "growth KiB per session per minute",
                "calls answered",
                "audio lag p99 ms",
                "longest GC pause ms",
            ],
            rows,
        )
    for m, profile in v.profiles:
        if profile is None:
            continue
        lines += [
            f"### Profile: {VOICE_LABELS[m.kind]}, {m.sessions} sessions",
            "",
            f"pyinstrument (1 ms) on the client's event loop over {m.stats.wall_seconds:.0f} s "
            f"({profile.busy_seconds:.1f} s busy; the profiler slows it down). Groups count a "
            "function with what it calls.",
            "",
        ]
        lines += _table(
            ["group", "share of busy time"], [[g, _pct(x)] for g, x in profile.groups.items() if x]
        )
        lines += _table(
            ["function (own time, top)", "own", "with callees"],
            [[f"`{e.function}`", _pct(e.self_share), _pct(e.inclusive)] for e in profile.entries],
        )
    return lines


def _voice_rounds(v: VoiceResult) -> list[str]:
    from .voice import ROUND_KINDS, ROUND_SIZES, ROUNDS

    lines = [
        f"### The targets' sizes in {ROUNDS} rounds",
        "",
        f"At {' and '.join(map(str, ROUND_SIZES))} sessions the kinds below ran {ROUNDS - 1} "
        "more times after the sweep, interleaved (raw, then each rtguard kind, round after "
        "round), because the host's noise moves one run's CPU by 10% or more: the sweep's "
        "run is the first of each list. *of raw* is each round's ratio to the raw client's "
        "run of the same round; the targets take the median.",
        "",
    ]
    rows = []
    for size in ROUND_SIZES:
        for kind in ROUND_KINDS:
            runs = v.rounds(kind, size)
            if not runs:
                continue
            cpu = [m.cpu_per_session_second * 1e3 for m in runs]
            ratios = v.of_raw(kind, size)
            rows.append(
                [
                    f"{size}",
                    VOICE_LABELS[kind],
                    " / ".join(f"{x:.2f}" for x in cpu),
                    f"{statistics.median(cpu):.2f}",
                    " / ".join(f"{x:.2f}" for x in ratios),
                    f"{statistics.median(ratios):.2f}x" if ratios else "n/a",
                    " / ".join(f"{m.stats.lag_p99 * 1e3:.1f}" for m in runs),
                ]
            )
    return lines + _table(
        [
            "S",
            "client",
            "CPU ms per session-s, each round",
            "median",
            "of raw, each round",
            "median of raw",
            "audio lag p99 ms, each round",
        ],
        rows,
    )


def _method() -> list[str]:
    return [
        "## Method and caveats",
        "",
        "- Separate processes: the simulator (one fresh `Simulator` per run), one worker per "
        "client kind (raw, SDK, rtguard with each telemetry set-up; its heap holds only its own "
        "library, which matters for garbage collection), a fresh process per memory run, and "
        "the OTLP receiver. The failure-completion scenarios run in the benchmark process, "
        "where the tools raise the exceptions the app must receive. Loopback only.",
        "- Both libraries run their tools as asyncio tasks (`async_tool_calls`); the app drains "
        "the event stream and counts one event per call (rtguard: `OutputAcknowledged`, the "
        "server confirmed the output; the SDK: `tool_end`, emitted after the send).",
        "- The SDK connects with `RealtimeRunner(agent).run(model_config={'url': ..., "
        "'api_key': <dummy>})`; its tracing is disabled (`set_tracing_disabled(True)`, "
        "`tracing_disabled`) so nothing leaves the machine. The simulator counts what each "
        "client sent (`session.update`, `response.create`); each client counts the server "
        "`error` events it received. Both are shown under the throughput and completion "
        "tables.",
        "- The raw client answers each call as soon as its arguments are done and sends "
        "`response.create` when the server has no response in progress: the same protocol "
        "work, and nothing else.",
        "- rtguard's counterpart of the SDK's disabled failure handler is "
        '`on_tool_error="raise"`: the model still gets a failure output, then the original '
        "exception is raised from the event iterator (iterate again to continue).",
        "",
    ]


def render(r: Results) -> str:
    lines = _header(r) + _targets(r)
    if r.throughput is not None:
        lines += _throughput(r.throughput)
    if r.latency is not None:
        lines += _latency(r.latency)
    if r.completion is not None:
        lines += _completion(r.completion)
    if r.telemetry is not None:
        lines += _telemetry(r.telemetry)
    if r.memory is not None:
        lines += _memory(r.memory)
    if r.profiles is not None:
        lines += _profiles(r.profiles)
    if r.voice is not None:
        lines += _voice(r.voice)
    lines += _method()
    return "\n".join(lines).rstrip() + "\n"
