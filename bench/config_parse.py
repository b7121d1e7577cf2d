"""Config parse: the bounded event-stream parser against the path it replaced.

    python3 bench/config_parse.py

Prints, for the example collector config and a ~200 KB collector-like config, the time per
parse of the old path (``check_limits`` event pass + ``yaml.load`` with the C loader) and of
``parse_config``, and the ratio new/old (below 1 = faster). Then how long the event loop is
held while a large config is parsed: in slices on the loop (what ConfigCache.load does) or on
a worker thread, measured as the lateness of a 1 ms ticker.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from pdp.engine.configparse import ConfigLoader, _BaseLoader, parse_config
from pdp.engine.context import ConfigCache

ROOT = Path(__file__).resolve().parents[1]


def old_check_limits(text: str, max_depth: int = 64, max_nodes: int = 1_000_000) -> None:
    """The event pass that ran before ``yaml.load`` until issue 16 (kept here to compare)."""
    anchors: dict[str, int] = {}
    stack: list[list[Any]] = []
    total = 0
    for event in yaml.parse(text, Loader=_BaseLoader):
        size = -1
        if isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            size, anchor = anchors.get(event.anchor or "", 1), None
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            stack.append([event.anchor, 1])
            if len(stack) > max_depth:
                raise ValueError("too deep")
            continue
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            anchor, size = stack.pop()
        else:
            continue
        if anchor:
            anchors[anchor] = size
        if stack:
            stack[-1][1] += size
        else:
            total += size
        if total + sum(s[1] for s in stack[-1:]) > max_nodes or size > max_nodes:
            raise ValueError("too many nodes")


def old(text: str) -> Any:
    old_check_limits(text)
    return yaml.load(text, Loader=ConfigLoader)


def new(text: str) -> Any:
    return parse_config(text, "config.yaml", max_nodes=10_000_000)[0]


def collector_like(services: int) -> str:
    """A collector config with ``services`` receiver/exporter/pipeline triples."""
    out = ["receivers:"]
    for i in range(services):
        out.append(f"  otlp/{i}:\n    protocols:\n      grpc: {{endpoint: 0.0.0.0:{4000 + i}}}\n"
                   f"      http: {{endpoint: '0.0.0.0:{5000 + i}',"
                   f" cors: {{allowed_origins: [https://a{i}.example.com]}}}}")
    out.append("processors:\n  batch: {}\n  memory_limiter: {check_interval: 1s, limit_mib: 512}")
    out.append("exporters:")
    for i in range(services):
        out.append(f"  otlp/{i}:\n    endpoint: traces-{i}.eu.example.com:4317\n"
                   "    timeout: 10s\n"
                   "    retry_on_failure: {enabled: true, max_elapsed_time: 300}\n"
                   f"    tls:\n      insecure: false\n      ca_file: /etc/ssl/ca-{i}.pem\n"
                   "    sending_queue: {num_consumers: 4, queue_size: 1000}")
    out.append("service:\n  pipelines:")
    for i in range(services):
        out.append(f"    traces/{i}:\n      receivers: [otlp/{i}]\n"
                   f"      processors: [memory_limiter, batch]\n      exporters: [otlp/{i}]")
    return "\n".join(out) + "\n"


def per_call(fn: Callable[[str], Any], text: str, min_s: float = 1.0) -> float:
    """Best of five rounds of the mean time per call, each round at least min_s / 5."""
    best = float("inf")
    for _ in range(5):
        n, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < min_s / 5 or n == 0:
            fn(text)
            n += 1
        best = min(best, elapsed / n)
    return best


async def loop_lateness(parse: Callable[[], Awaitable[Any]]) -> tuple[float, float, float]:
    """p50, p99 and max lateness (ms) of a 1 ms ticker while ``parse`` runs, and its time."""
    late: list[float] = []
    done = False

    async def ticker() -> None:
        while not done:
            due = time.perf_counter() + 0.001
            await asyncio.sleep(0.001)
            late.append((time.perf_counter() - due) * 1000)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    late.clear()
    await parse()
    done = True
    await task
    late.sort()
    return (statistics.median(late), late[int(len(late) * 0.99)], late[-1])


async def lateness_table(text: str) -> None:
    async def sliced() -> Any:
        cache = ConfigCache(10, 1 << 30, max_nodes=10_000_000)
        return await cache.load(text, "config.yaml")

    async def threaded() -> Any:
        return await asyncio.to_thread(new, text)

    for name, parse in (("slices on the loop", sliced), ("worker thread", threaded)):
        started = time.perf_counter()
        p50, p99, worst = await loop_lateness(parse)
        took = (time.perf_counter() - started) * 1000
        print(f"  {name:<20} parse+wait {took:7.1f} ms   ticker lateness p50 {p50:5.2f}"
              f"  p99 {p99:5.2f}  max {worst:5.2f} ms")


def main() -> None:
    cases = [
        ("examples/configs/collector.yaml", (ROOT / "examples/configs/collector.yaml").read_text()),
        ("collector-like ~200 KB", collector_like(400)),
    ]
    print(f"{'config':<34}{'bytes':>9}{'old ms':>10}{'new ms':>10}{'new/old':>9}")
    for name, text in cases:
        assert old(text) == new(text), name
        t_old, t_new = per_call(old, text), per_call(new, text)
        print(f"{name:<34}{len(text):>9}{t_old * 1000:>10.3f}{t_new * 1000:>10.3f}"
              f"{t_new / t_old:>9.2f}")
    big = collector_like(4000)
    print(f"\nevent loop while a {len(big) // 1024} KB config is parsed (no node limit):")
    asyncio.run(lateness_table(big))


if __name__ == "__main__":
    main()
