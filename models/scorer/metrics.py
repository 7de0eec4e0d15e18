"""The scorer's Prometheus metrics (one registry per app, so scorers can share a process).

======================================  ==========================================================
``streamrank_model_version``            served model version (gauge)
``streamrank_model_followed_version``   newest version applied in order (gauge)
``streamrank_model_pinned``             1 while an operator's pin holds (gauge)
``streamrank_delta_lag_versions``       newest version seen on the topic minus the served one
``streamrank_delta_lag_seconds``        how long a newer version than the served one has been seen
``streamrank_model_watermark_ms``       event time the followed version learned up to
``streamrank_quality_guard_holding``    1 while the quality guard holds the last good version
``streamrank_quality_guard_holds_total`` updates the guard refused to serve
``streamrank_model_reloads_total``      applied updates by ``kind`` (delta, snapshot, bootstrap)
``streamrank_model_updates_rejected_total`` refused updates by ``reason`` (bad_checksum,
                                        bad_signature, missing_signature, bad_format,
                                        incompatible, other_model, gap)
``streamrank_request_seconds``          ``/rank`` latency, features included (histogram)
``streamrank_requests_total``           requests by ``endpoint`` and HTTP ``code``
``streamrank_request_errors_total``     4xx/5xx answers by ``endpoint`` and ``code``
``streamrank_batch_candidates``         candidates per forward pass (histogram)
``streamrank_batch_requests``           requests per forward pass (histogram)
``streamrank_feature_errors_total``     online-store reads that failed (answered degraded)
``streamrank_item_cache_hits_total``    item rows served from the item cache (and ``_misses``)
``streamrank_search_seconds``           ``/search`` latency: recall, filter and rank (histogram)
``streamrank_query_embed_seconds``      embedding a request's query, cache hits included
``streamrank_catalog_items``            items the scorer's catalog holds (gauge)
======================================  ==========================================================
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from models.follower import Outcome, Status
from models.scorer.service import ModelService

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SIZE_BUCKETS = (1, 10, 100, 300, 1_000, 3_000, 10_000, 30_000)


class ScorerMetrics:
    """Every metric of one scorer, in its own registry."""

    def __init__(self, service: ModelService) -> None:
        r = self.registry = CollectorRegistry()
        status = service.status
        Gauge("streamrank_model_version", "Served model version", registry=r).set_function(
            lambda: service.version)
        Gauge("streamrank_model_followed_version", "Newest version applied in order",
              registry=r).set_function(lambda: service.follower.version)
        Gauge("streamrank_model_pinned", "1 while a pin holds", registry=r).set_function(
            lambda: float(status().pinned is not None))
        Gauge("streamrank_delta_lag_versions", "Newest version seen minus the served one",
              registry=r).set_function(lambda: max(0, service.latest_seen - service.version))
        Gauge("streamrank_delta_lag_seconds", "Seconds a newer version has been seen unserved",
              registry=r).set_function(service.lag_seconds)
        Gauge("streamrank_model_watermark_ms", "Event time learned up to (followed version)",
              registry=r).set_function(lambda: status().watermark_ms)
        Gauge("streamrank_quality_guard_holding", "1 while the guard holds the last good version",
              registry=r).set_function(lambda: float(service.guard_holding))
        self.guard_holds = Counter("streamrank_quality_guard_holds", "Updates the guard refused",
                                   registry=r)
        self.reloads = Counter("streamrank_model_reloads", "Applied updates", ["kind"], registry=r)
        self.rejected = Counter("streamrank_model_updates_rejected", "Refused updates",
                                ["reason"], registry=r)
        self.latency = Histogram("streamrank_request_seconds", "/rank latency",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("streamrank_requests", "Requests", ["endpoint", "code"],
                                registry=r)
        self.errors = Counter("streamrank_request_errors", "Error answers", ["endpoint", "code"],
                              registry=r)
        self.batch_candidates = Histogram("streamrank_batch_candidates", "Candidates per pass",
                                          buckets=SIZE_BUCKETS, registry=r)
        self.batch_requests = Histogram("streamrank_batch_requests", "Requests per pass",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.feature_errors = Counter("streamrank_feature_errors", "Failed feature reads",
                                      registry=r)
        self.search_latency = Histogram("streamrank_search_seconds", "/search latency",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.query_embed = Histogram("streamrank_query_embed_seconds", "Query embedding",
                                     buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03),
                                     registry=r)
        self.catalog_items = Gauge("streamrank_catalog_items", "Items in the catalog",
                                   registry=r)
        self._service = service

    def count_item_cache(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Report ``counts()`` (the feature reader's item cache hits and misses so far) as
        ``streamrank_item_cache_hits_total`` and ``_misses_total`` at each scrape."""
        self.registry.register(_ItemCache(counts))

    def outcome(self, kind: str, outcome: Outcome) -> None:
        """Count one reloader outcome."""
        if outcome.status == Status.APPLIED:
            self.reloads.labels(kind).inc()
            if self._service.guard_holding and self._service.guard_reason:
                self.guard_holds.inc()
        elif outcome.status == Status.REJECTED:
            self.rejected.labels(outcome.reason.split(":")[0]).inc()
        elif outcome.status == Status.NEEDS_BOOTSTRAP:
            self.rejected.labels("gap").inc()

    def answered(self, endpoint: str, code: int) -> None:
        """Count one answer."""
        self.requests.labels(endpoint, str(code)).inc()
        if code >= 400:
            self.errors.labels(endpoint, str(code)).inc()


class _ItemCache(Collector):
    """The item cache's counters, read from the feature reader when scraped (a request only
    adds to the reader's own two integers)."""

    def __init__(self, counts: Callable[[], tuple[int, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        hits, misses = self._counts()
        yield CounterMetricFamily("streamrank_item_cache_hits", "Item rows from the cache",
                                  value=hits)
        yield CounterMetricFamily("streamrank_item_cache_misses", "Item rows read",
                                  value=misses)
