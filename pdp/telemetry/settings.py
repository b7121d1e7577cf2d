"""Telemetry settings; the server maps ``PDP_OTLP_ENDPOINT`` and friends onto these."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TelemetrySettings:
    """Whether telemetry is on, and where it goes.

    ``enabled`` False (the default) selects :class:`~pdp.telemetry.NoTelemetry`: nothing is
    created, nothing exported, and the decision path pays (almost) nothing.

    ``otlp_endpoint``: an OTLP/gRPC collector, e.g. ``http://127.0.0.1:4317`` (``http://``
    means plaintext, ``https://`` TLS; ``otlp_insecure`` overrides). Spans and metrics are
    both sent there. None: no OTLP export.

    ``prometheus_port``: serve ``/metrics`` for scraping on ``prometheus_host:port``
    (``0`` picks a free port, see :attr:`Telemetry.prometheus_port`). None: no endpoint.

    ``tenant_label``: put the tenant on decision metrics. Turn off when tenants are so many
    that the series count would hurt the metrics backend.
    """

    enabled: bool = False
    otlp_endpoint: str | None = None
    prometheus_port: int | None = None
    service_name: str = "pdp"
    prometheus_host: str = "127.0.0.1"
    otlp_insecure: bool | None = None
    otlp_headers: dict[str, str] = field(default_factory=dict)
    otlp_timeout_s: float = 10.0
    metric_export_interval_s: float = 15.0
    span_export_delay_s: float = 1.0
    tenant_label: bool = True
    service_instance_id: str | None = None
    sample_ratio: float = 1.0
    policy_spans: bool = True

    # ``sample_ratio``: fraction of new traces recorded (parent-based: a caller's sampled
    # flag in ``traceparent`` is always honoured). Unsampled spans cost a fraction of a
    # recorded one; metrics are unaffected.
    # ``policy_spans``: one child span per evaluated policy. Each recorded span costs ~10 us
    # of CPU in the OpenTelemetry SDK, so with many policies per decision turn this off:
    # ``policy_span`` then costs what it costs in NoTelemetry.

    def __post_init__(self) -> None:
        if self.prometheus_port is not None and not 0 <= self.prometheus_port <= 65535:
            raise ValueError(f"prometheus_port out of range: {self.prometheus_port}")
        if self.otlp_endpoint is not None and not self.otlp_endpoint.strip():
            raise ValueError("otlp_endpoint must not be empty (use None to disable OTLP)")
        if self.metric_export_interval_s <= 0 or self.span_export_delay_s <= 0:
            raise ValueError("export intervals must be > 0")
        if self.otlp_timeout_s <= 0:
            raise ValueError("otlp_timeout_s must be > 0")
        if not 0.0 <= self.sample_ratio <= 1.0:
            raise ValueError("sample_ratio must be within [0, 1]")
        if not self.service_name:
            raise ValueError("service_name must not be empty")
