"""Voice sessions, as a voice-agent host carries them: one client process holds S concurrent
sessions; the simulator streams each one the model's speech at real-time pace
(``response.output_audio.delta``: 20 ms of PCM16 at 24 kHz, 960 bytes, 50 chunks a second
while the model speaks) with its transcript, and issues a tool call every few seconds; the
app iterates every event and reads every chunk, as it must to play it.

Each chunk carries the simulator's send time (``Scenario.stamp_audio``) and the app takes
the difference when it sees it: the audio lag. Over a window of T seconds after a warm-up,
per client kind and S: the client process's CPU per session-second, RSS, GC pauses and audio
lag; over the whole run: the calls' time to output, how many were answered, and how many
chunks the app saw of those sent. The simulator processes report their own CPU and how far
behind their real-time schedule they sent, so a run where the simulator fell behind says so.
Each run gets a fresh client process (its RSS and heap start clean).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import psutil

from rtguard.simulator import Scenario

from .clients import BenchClient, cpu_seconds, rtguard_agent, sdk_agent, telemetry_setup
from .memory import peak_rss
from .simserver import SimReport, SimulatorProcess, percentile
from .soak import slope
from .throughput import ECHO
from .workers import KINDS, GcClock, Window, Workers, make_client

__all__ = ["LABELS", "VoiceResult", "VoiceRun", "run", "serve_sessions"]

CALL_EVERY = 4.0  # seconds between a session's tool calls
SPEAK_SECONDS = 3.0  # the model's answer to each call's output is spoken for this long
LABELS = {
    "raw": "raw websockets + json (the floor)",
    "rtguard-off": "rtguard, telemetry off",
    "rtguard-metrics": "rtguard, metrics",
    "rtguard-on": "rtguard, spans + metrics",
    "rtguard-on-gc": "rtguard, spans + metrics, GC tuned",
    "sdk": "openai-agents RealtimeSession",
}
# What docs/operations.md advises a host of many sessions: start-up objects out of the
# collector's sight, and young collections every 20,000 net allocations instead of 700 (with
# hundreds of sessions, one event-loop pass holds more than 700 frames' objects in flight).
GC_TUNED, GC_THRESHOLDS = "rtguard-on-gc", (20_000, 10, 10)
FULL_SIZES, QUICK_SIZES = (25, 100, 250, 400, 600), (50,)
FULL_SECONDS, QUICK_SECONDS = 20.0, 4.0
FULL_WARMUP, QUICK_WARMUP = CALL_EVERY, 2.0
SOAK_KINDS, SOAK_SESSIONS, SOAK_SECONDS, SOAK_SAMPLE_EVERY = ("raw", "rtguard-on"), 100, 600.0, 10.0
PROFILE_KINDS, PROFILE_SECONDS = ("raw", "rtguard-on"), 8.0
# The targets' sizes and kinds run in this many interleaved rounds (the sweep is the first):
# the host's noise moves one run's CPU by 10% or more, as much as the margin measured.
ROUNDS, ROUND_SIZES, ROUND_KINDS = 3, (250, 400), ("raw", "rtguard-off", "rtguard-on")
KEPT_UP_LAG = 0.100  # seconds: p99 audio lag under this (and every call answered) keeps up
SESSIONS_PER_SIMULATOR = 200
SIMULATORS = 3  # enough for the largest S
OPENING = 16  # sessions opening at once
_STAMP = struct.Struct("<d")
_BUCKET, _BUCKETS = 1e-4, 100_000  # the lag histogram: 0.1 ms buckets up to 10 s


# --- in the client's process ----------------------------------------------------------------


class _Ear:
    """The app's audio sink, shared by the process's sessions: counts every chunk and, while
    ``listening``, how late each one arrived (a histogram: constant memory)."""

    def __init__(self) -> None:
        self.chunks = 0
        self.listening = False
        self.counts = [0] * (_BUCKETS + 1)
        self.longest = 0.0

    def __call__(self, pcm: bytes) -> None:
        self.chunks += 1
        if self.listening:
            lag = time.monotonic() - _STAMP.unpack_from(pcm)[0]
            self.counts[min(int(lag / _BUCKET), _BUCKETS)] += 1
            if lag > self.longest:
                self.longest = lag

    def percentile(self, q: float) -> float:
        """To the bucket's upper edge (0.1 ms)."""
        edges = ((bucket + 1) * _BUCKET for bucket in range(len(self.counts)))
        return histogram_percentile(zip(edges, self.counts, strict=True), q)


def histogram_percentile(histogram: Iterable[tuple[float, int]], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of (value, count) pairs in ascending value
    order; NaN for an empty histogram."""
    pairs = list(histogram)
    rank, seen = max(1, math.ceil(q / 100 * sum(count for _, count in pairs))), 0
    for value, count in pairs:
        seen += count
        if seen >= rank:
            return value
    return float("nan")


@dataclass(frozen=True)
class VoiceStats:
    """What the client process measured over the window (``chunks``: over the whole run)."""

    sessions: int
    cpu_seconds: float
    wall_seconds: float
    lag_p50: float
    lag_p99: float
    lag_max: float
    lag_chunks: int
    chunks: int
    rss_first: int  # after the first session opened
    rss: list[tuple[float, int]]  # (seconds into the window, RSS)
    peak_rss: int
    gc: GcClock
    delivered: int
    dropped: int
    server_errors: int
    profile: Any = None  # profiles.ProfiledRun when asked for


async def serve_sessions(
    conn: Connection,
    kind: str,
    urls: list[str],
    sessions: int,
    warmup: float,
    seconds: float,
    sample_every: float,
    groups: dict[str, tuple[str, ...]] | None,
) -> VoiceStats:
    """Open ``sessions`` sessions of ``kind`` (round robin over ``urls``), warm up, measure
    for ``seconds`` ("started" when it begins, "delivered" when it ends), then close them all
    when the parent says "close"."""
    ear = _Ear()
    if kind == GC_TUNED:
        kind = "rtguard-on"
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
    telemetry = KINDS.get(kind)
    setup = telemetry_setup(telemetry) if telemetry is not None else None
    # One agent for all sessions, as an app defines its agent once.
    agent = sdk_agent() if kind == "sdk" else rtguard_agent() if setup is not None else None
    clients: list[BenchClient] = [
        make_client(kind, setup=setup, audio=ear, agent=agent)[0] for _ in range(sessions)
    ]
    process, gate, window = psutil.Process(), asyncio.Semaphore(OPENING), Window(groups)

    async def through_gate(step: Callable[[], Any]) -> None:
        async with gate:
            await step()

    try:
        await clients[0].open(urls[0])
        rss_first = process.memory_info().rss
        await asyncio.gather(
            *(
                through_gate(lambda c=c, i=i: c.open(urls[i % len(urls)]))
                for i, c in enumerate(clients)
                if i
            )
        )
        await asyncio.sleep(warmup)
        conn.send("started")
        window.start()
        ear.listening = True
        samples: list[tuple[float, int]] = []
        started, cpu_before = time.monotonic(), cpu_seconds()
        while (elapsed := time.monotonic() - started) < seconds:
            samples.append((elapsed, process.memory_info().rss))
            await asyncio.sleep(min(sample_every, seconds - elapsed))
        cpu, wall = cpu_seconds() - cpu_before, time.monotonic() - started
        ear.listening = False
        samples.append((wall, process.memory_info().rss))
        window.stop()
        conn.send("delivered")
        await asyncio.to_thread(conn.recv)  # "close": the simulators have every output
    finally:
        window.stop()
        await asyncio.gather(*(through_gate(c.close) for c in clients), return_exceptions=True)
        if setup is not None:
            setup.shutdown()
    return VoiceStats(
        sessions=sessions,
        cpu_seconds=cpu,
        wall_seconds=wall,
        lag_p50=ear.percentile(50),
        lag_p99=ear.percentile(99),
        lag_max=ear.longest,
        lag_chunks=sum(ear.counts),
        chunks=ear.chunks,
        rss_first=rss_first,
        rss=samples,
        peak_rss=peak_rss(),
        gc=window.clock,
        delivered=sum(c.delivered for c in clients),
        dropped=sum(c.dropped for c in clients),
        server_errors=sum(c.server_errors.total() for c in clients),
        profile=window.profile(),
    )


# --- in the benchmark's process -------------------------------------------------------------


@dataclass(frozen=True)
class VoiceRun:
    kind: str
    sessions: int
    stats: VoiceStats
    simulators: int
    issued: int
    answered: int
    duplicated: int
    output_p50: float  # seconds from the simulator issuing a call to receiving its output
    output_p99: float
    chunks_sent: int
    sim_late_p99: float  # seconds behind the real-time schedule the simulators sent a chunk
    sim_late_max: float
    sim_busy: float  # the busiest simulator process: CPU seconds per wall second, the window

    @property
    def cpu_per_session_second(self) -> float:
        return self.stats.cpu_seconds / (self.sessions * self.stats.wall_seconds)

    @property
    def client_busy(self) -> float:
        return self.stats.cpu_seconds / self.stats.wall_seconds

    @property
    def bytes_per_session(self) -> float:
        """RSS at the end of the window over RSS after the first session, per later session."""
        return (self.stats.rss[-1][1] - self.stats.rss_first) / max(1, self.sessions - 1)

    @property
    def rss_growth_per_minute(self) -> float:
        """Least-squares slope of RSS over the second half of the window, bytes per minute."""
        half = [(t, r) for t, r in self.stats.rss if t >= self.stats.wall_seconds / 2]
        if len(half) < 3:
            return float("nan")
        return slope([t for t, _ in half], [float(r) for _, r in half]) * 60

    @property
    def kept_up(self) -> bool:
        """p99 audio lag under KEPT_UP_LAG with nothing dropped, every call answered once,
        and the simulators on schedule (a client that stops reading holds them back)."""
        s = self.stats
        return (
            s.lag_p99 < KEPT_UP_LAG
            and self.sim_late_p99 < KEPT_UP_LAG
            and s.dropped == 0
            and self.answered == self.issued
            and not self.duplicated
        )


@dataclass
class VoiceResult:
    sizes: tuple[int, ...]
    seconds: float
    warmup: float
    runs: dict[tuple[str, int], VoiceRun] = field(default_factory=dict)
    # (kind, S) -> the runs of the rounds after the sweep's, in order
    later_rounds: dict[tuple[str, int], list[VoiceRun]] = field(default_factory=dict)
    skipped: dict[tuple[str, int], int] = field(default_factory=dict)  # -> S it fell behind at
    soak: list[VoiceRun] = field(default_factory=list)
    profiles: list[tuple[VoiceRun, Any]] = field(default_factory=list)

    def rounds(self, kind: str, size: int) -> list[VoiceRun]:
        """Every run of ``kind`` at ``size``, the sweep's first; empty if it was not run."""
        first = self.runs.get((kind, size))
        return [first, *self.later_rounds.get((kind, size), [])] if first else []

    def of_raw(self, kind: str, size: int) -> list[float]:
        """``kind``'s CPU per session-second over the raw client's, round by round (a round's
        runs are back to back, so they share the host's state of the moment)."""
        return [
            m.cpu_per_session_second / raw.cpu_per_session_second
            for m, raw in zip(self.rounds(kind, size), self.rounds("raw", size), strict=False)
        ]

    def largest_kept_up(self, kind: str) -> int | None:
        kept = [s for (k, s), m in self.runs.items() if k == kind and m.kept_up]
        return max(kept, default=None)


def _late(histogram: dict[int, int], q: float | None) -> float:
    """A percentile (None: the maximum) of the simulators' lateness, in seconds."""
    if not histogram:
        return 0.0
    if q is None:
        return max(histogram) / 1e3
    return histogram_percentile(((ms / 1e3, histogram[ms]) for ms in sorted(histogram)), q)


async def measure(
    sims: list[SimulatorProcess],
    workers: Workers,
    kind: str,
    sessions: int,
    seconds: float,
    warmup: float,
    *,
    sample_every: float = 1.0,
    groups: dict[str, tuple[str, ...]] | None = None,
) -> VoiceRun:
    """One run: fresh simulators (sessions split among the first of ``sims`` needed), a
    fresh client process with ``sessions`` sessions; after the window the simulators issue no
    more calls, and the client closes once every issued call is answered and spoken to."""
    used = sims[: math.ceil(sessions / SESSIONS_PER_SIMULATOR)]
    # Calls to spare: the script is ended after the window, whatever the sessions' pace.
    calls = math.ceil((warmup + seconds + 60) / CALL_EVERY)
    urls = []
    for i, sim in enumerate(used):
        share = len(range(i, sessions, len(used)))
        scenario = Scenario(
            calls=(ECHO,) * (share * calls),
            rate=1 / CALL_EVERY,
            speak_seconds=SPEAK_SECONDS,
            stamp_audio=True,
        )
        urls.append(await sim.start(scenario))
    sim_cpu: dict[str, list[float]] = {}

    def started() -> None:
        sim_cpu["start"] = [sim.cpu_seconds() for sim in used]

    async def wind_down() -> None:
        sim_cpu["end"] = [sim.cpu_seconds() for sim in used]
        for sim in used:
            await sim.end_script()
        for sim in used:
            await sim.settle(0, quiet=5.0, timeout=30.0)
        await asyncio.sleep(SPEAK_SECONDS + 0.5)  # the last answers are spoken to the end

    command = ("voice", urls, sessions, warmup, seconds, sample_every, groups)
    try:
        stats: VoiceStats = await workers.get(kind).ask(
            command, 300 + warmup + seconds, started=started, before_close=wind_down
        )
    finally:
        reports: list[SimReport] = []
        for sim in used:
            with contextlib.suppress(Exception):
                reports.append(await sim.stop())
        workers.close(kind)  # a fresh process for the next run
    late: dict[int, int] = {}
    for report in reports:
        for ms, count in report.audio_late_ms.items():
            late[ms] = late.get(ms, 0) + count
    latencies = [x for report in reports for x in report.latencies]
    busy = [
        (end - start) / stats.wall_seconds
        for start, end in zip(sim_cpu.get("start", []), sim_cpu.get("end", []), strict=True)
    ]
    return VoiceRun(
        kind=kind,
        sessions=sessions,
        stats=stats,
        simulators=len(used),
        issued=sum(r.issued for r in reports),
        answered=sum(r.answered for r in reports),
        duplicated=sum(r.duplicated for r in reports),
        output_p50=percentile(latencies, 50),
        output_p99=percentile(latencies, 99),
        chunks_sent=sum(late.values()),
        sim_late_p99=_late(late, 99),
        sim_late_max=_late(late, None),
        sim_busy=max(busy, default=float("nan")),
    )


def _line(m: VoiceRun) -> str:
    s = m.stats
    return (
        f"voice {m.kind:15} S={m.sessions:>3}: {m.cpu_per_session_second * 1e3:5.2f} ms "
        f"CPU/session-s (busy {m.client_busy:4.0%}), lag p50/p99/max {s.lag_p50 * 1e3:.1f}/"
        f"{s.lag_p99 * 1e3:.1f}/{s.lag_max * 1e3:.0f} ms, {m.bytes_per_session / 1024:.0f} KiB/"
        f"session, calls {m.answered}/{m.issued}, chunks {s.chunks}/{m.chunks_sent}, dropped "
        f"{s.dropped}, sim busy {m.sim_busy:.0%} late p99 {m.sim_late_p99 * 1e3:.0f} ms"
    )


VOICE_GROUPS = {
    "websockets (reading frames, sending)": ("(websockets/",),
    "JSON (parse and encode)": ("(json/", "loads (<built-in>)", "dumps (<built-in>)"),
    "rtguard: the core (SessionCore: parsing, the state machine)": ("SessionCore.",),
    "rtguard: carrying out what the core produced (RealtimeSession._drain*)": (
        "RealtimeSession._drain",
    ),
    "rtguard: the app's iteration (RealtimeSession.__anext__)": ("RealtimeSession.__anext__",),
    "rtguard: running tools and writing (RealtimeSession._run_job, _write)": (
        "RealtimeSession._run_job",
        "RealtimeSession._write",
    ),
    "rtguard telemetry (SessionTelemetry)": ("SessionTelemetry.",),
    "OpenTelemetry SDK (spans)": ("(opentelemetry/",),
    "prometheus_client (metrics)": ("(prometheus_client/",),
    "the app's audio sink (base64 decode, the lag)": ("_Ear.__call__", "b64decode"),
}


async def run(
    sim: SimulatorProcess, workers: Workers, *, quick: bool, log: Callable[[str], None]
) -> VoiceResult:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    seconds = QUICK_SECONDS if quick else FULL_SECONDS
    warmup = QUICK_WARMUP if quick else FULL_WARMUP
    result = VoiceResult(sizes, seconds, warmup)
    sims = [sim, *(SimulatorProcess() for _ in range(SIMULATORS - 1))]
    try:
        for size in sizes:
            for kind in LABELS:  # interleaved, so noise hits every client alike
                behind = [s for (k, s), m in result.runs.items() if k == kind and not m.kept_up]
                if behind:
                    result.skipped[(kind, size)] = min(behind)
                    continue
                m = await measure(sims, workers, kind, size, seconds, warmup)
                result.runs[(kind, size)] = m
                log(_line(m))
        for _ in range(0 if quick else ROUNDS - 1):
            for size in ROUND_SIZES:
                for kind in ROUND_KINDS:
                    if (kind, size) in result.runs:  # not skipped in the sweep
                        m = await measure(sims, workers, kind, size, seconds, warmup)
                        result.later_rounds.setdefault((kind, size), []).append(m)
                        log("again " + _line(m))
        if not quick:  # side by side, each kind with its own simulator
            result.soak = list(
                await asyncio.gather(
                    *(
                        measure(
                            [sims[i]],
                            workers,
                            kind,
                            SOAK_SESSIONS,
                            SOAK_SECONDS,
                            warmup,
                            sample_every=SOAK_SAMPLE_EVERY,
                        )
                        for i, kind in enumerate(SOAK_KINDS)
                    )
                )
            )
            for m in result.soak:
                log("soak " + _line(m))
        size = 50 if quick else 250
        for kind in PROFILE_KINDS:
            m = await measure(
                sims, workers, kind, size, PROFILE_SECONDS, warmup, groups=VOICE_GROUPS
            )
            result.profiles.append((m, m.stats.profile))
            log("profiled " + _line(m))
    finally:
        for extra in sims[1:]:
            extra.close()
    return result
