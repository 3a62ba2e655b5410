"""``GET /metrics``: what the node counts, in Prometheus's text exposition format.

The node's metrics come from a ``ports.MetricsSource`` (``mailgate.runtime``
gives one, summed over the node's SMTP processes; see its list of metrics);
``prometheus_client`` writes them out, with the standard metrics of this
process beside them (``process_*``: CPU, memory, open files; ``python_*``).
Nothing of ``prometheus_client`` runs but at a scrape: the counting itself
is plain integers in each process.  A scraper that asks for OpenMetrics
(``Accept: application/openmetrics-text``) gets it.

``/metrics`` keeps the API's access rules: the allowed ``Host`` names, and
HTTP basic auth when ``--http-auth`` is set (Prometheus sends it from a
scrape job's ``basic_auth``; it scrapes an IP address, which is always
allowed).  The counts tell how much mail a server takes and whom it turns
away, so they are not for anyone who can reach the port.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Metric,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mailgate.ports import MetricFamily, MetricsSource

__all__ = ["metrics_routes"]


class _Families(Collector):
    """The node's families as ``prometheus_client`` metrics, for one scrape."""

    def __init__(self, families: list[MetricFamily]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        for family in self._families:
            metric = Metric(family.name, family.help, family.kind)
            for sample in family.samples:
                metric.add_sample(sample.name, dict(sample.labels), sample.value)
            yield metric


def metrics_routes(source: MetricsSource | None) -> list[Route]:
    """``GET /metrics`` over ``source`` (without one: this process's metrics only)."""

    async def metrics(request: Request) -> Response:
        families = list(await source.metrics()) if source is not None else []
        registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        registry.register(_Families(families))
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        return Response(encoder(registry), media_type=content_type)

    return [Route("/metrics", metrics, methods=["GET"])]
