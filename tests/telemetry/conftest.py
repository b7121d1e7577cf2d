"""An in-test OTLP/gRPC receiver (trace + metrics services) on a free loopback port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1.trace_pb2 import Span


@dataclass
class OtlpReceiver:
    port: int = 0
    trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(
        default_factory=list)
    metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(
        default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[Span]:
        with self.cond:
            return [s for req in self.trace_requests for rs in req.resource_spans
                    for ss in rs.scope_spans for s in ss.spans]

    def metric_names(self) -> set[str]:
        with self.cond:
            return {m.name for req in self.metric_requests for rm in req.resource_metrics
                    for sm in rm.scope_metrics for m in sm.metrics}


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, rec: OtlpReceiver) -> None:
        self.rec = rec

    def Export(self, request: Any, context: Any) -> Any:
        with self.rec.cond:
            self.rec.trace_requests.append(request)
            self.rec.cond.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, rec: OtlpReceiver) -> None:
        self.rec = rec

    def Export(self, request: Any, context: Any) -> Any:
        with self.rec.cond:
            self.rec.metric_requests.append(request)
            self.rec.cond.notify_all()
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def otlp_receiver() -> Iterator[OtlpReceiver]:
    rec = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _Traces(rec), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call]
        _Metrics(rec), server)
    rec.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield rec
    finally:
        server.stop(grace=None)
