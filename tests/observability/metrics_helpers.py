"""Read what the OpenTelemetry SDK's in-memory reader collected, by metric name."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Histogram,
    InMemoryMetricReader,
    Sum,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aiolease import otel


@dataclass
class Metric:
    name: str
    unit: str
    kind: str  # "counter" | "updowncounter" | "histogram"
    points: list[Any]
    schema_url: str

    def value(self, **attributes: str) -> Any:
        """The one data point with these attributes: its value (a Sum) or the point
        itself (a Histogram)."""
        wanted = {k.replace("__", "."): v for k, v in attributes.items()}
        found = [p for p in self.points if dict(p.attributes) == wanted]
        assert len(found) == 1, (
            f"{self.name}: {wanted} in {[dict(p.attributes) for p in self.points]}"
        )
        point = found[0]
        return point if self.kind == "histogram" else point.value

    def has(self, **attributes: str) -> bool:
        wanted = {k.replace("__", "."): v for k, v in attributes.items()}
        return any(dict(p.attributes) == wanted for p in self.points)


class Collected:
    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.metrics: dict[str, Metric] = {}
        data = reader.get_metrics_data()
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                if sm.scope.name != "aiolease":
                    continue
                for m in sm.metrics:
                    if isinstance(m.data, Histogram):
                        kind = "histogram"
                    else:
                        assert isinstance(m.data, Sum), m
                        kind = "counter" if m.data.is_monotonic else "updowncounter"
                    self.metrics[m.name] = Metric(
                        m.name, m.unit or "", kind, list(m.data.data_points), sm.schema_url
                    )

    def __getitem__(self, name: str) -> Metric:
        """The metric ``name`` (with no data points when nothing was collected for it)."""
        return self.metrics.get(name) or Metric(name, "", "absent", [], "")


@contextmanager
def instrumented() -> Iterator[InMemoryMetricReader]:
    """aiolease instrumented with a fresh SDK MeterProvider and in-memory reader.

    Garbage is collected first: a pool or limiter of an earlier test (the same test on
    the other event loop) that is unreachable but not yet collected would still report.
    """
    gc.collect()
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel.instrument(meter_provider=provider)
    try:
        yield reader
    finally:
        otel.uninstrument()
        provider.shutdown()


class Traced:
    def __init__(self, exporter: InMemorySpanExporter, provider: TracerProvider) -> None:
        self.exporter = exporter
        self.tracer = provider.get_tracer("test")

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        got = list(self.exporter.get_finished_spans())
        return [s for s in got if name is None or s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.spans(name)
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]


@contextmanager
def traced(*, tracing: bool = True) -> Iterator[Traced]:
    """aiolease instrumented with fresh SDK meter and tracer providers."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    otel.instrument(
        meter_provider=meter_provider,
        tracing=tracing,
        tracer_provider=tracer_provider if tracing else None,
    )
    try:
        yield Traced(exporter, tracer_provider)
    finally:
        otel.uninstrument()
        meter_provider.shutdown()
        tracer_provider.shutdown()
