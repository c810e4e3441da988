"""Prometheus metrics of one application, in a registry of its own."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Methods counted under their own name; any other is counted as ``OTHER``, so that a
#: client inventing methods cannot grow the metrics without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 7200)


class Metrics:
    """The counters the server keeps; each app gets its own so tests and embedders never clash."""

    def __init__(self) -> None:
        # (method, route, status) -> the labelled counter and histogram: looking a child up
        # by its labels costs more than counting with it.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "datadl_http_requests",
            "HTTP requests answered.",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "datadl_http_request_duration_seconds",
            "Time to answer a request.",
            ["route"],
            registry=r,
        )
        self.downloads = Counter(
            "datadl_downloads",
            "Download attempts by final status and format.",
            ["status", "format"],
            registry=r,
        )
        self.download_bytes = Counter(
            "datadl_download_bytes",
            "Payload bytes sent by downloads.",
            ["status", "format"],
            registry=r,
        )
        self.download_seconds = Histogram(
            "datadl_download_duration_seconds",
            "Time from first to last byte of a download.",
            ["format"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.active_downloads = Gauge(
            "datadl_active_downloads", "Downloads streaming now.", registry=r
        )
        self.denials = Counter(
            "datadl_download_denials", "Refused download requests by code.", ["code"], registry=r
        )
        self.analysis_seconds = Histogram(
            "datadl_analysis_duration_seconds",
            "Time to answer a metadata or preview request.",
            ["kind"],
            registry=r,
        )
        self.cache_requests = Counter(
            "datadl_cache_requests",
            "Metadata lookups answered from cache or not.",
            ["result"],
            registry=r,
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        key = (method if method in _METHODS else "OTHER", route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(method=key[0], route=route, status=str(status)),
                self.request_seconds.labels(route=route),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)
