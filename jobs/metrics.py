"""A Flink job's own metrics, read from its REST endpoint (an embedded run's MiniCluster or a
cluster's JobManager): what the jobs count is what Flink counts, nothing kept beside it."""

from __future__ import annotations

import json
import urllib.request
from typing import Any


class FlinkRest:
    """The REST API of one Flink cluster at ``address`` (``host:port``).

    Flink's REST endpoint answers metrics from a cache refreshed in the background (every
    ``metrics.fetcher.update-interval``, 1 s for streamrank's jobs), so figures lag by up to
    that much.
    """

    def __init__(self, address: str, timeout_s: float = 2.0) -> None:
        self.base = f"http://{address}"
        self._timeout_s = timeout_s

    def get(self, path: str) -> Any:
        """The JSON answer to ``GET path``."""
        with urllib.request.urlopen(f"{self.base}{path}", timeout=self._timeout_s) as response:
            return json.load(response)

    def jobs(self) -> list[dict[str, Any]]:
        """The cluster's jobs (``jid``, ``name``, ``state``, ...), newest first."""
        return sorted(self.get("/jobs/overview")["jobs"], key=lambda j: -j["start-time"])

    def running_job(self, name: str | None = None) -> str | None:
        """The id of the newest running job (named ``name`` if given), else ``None``."""
        return next((j["jid"] for j in self.jobs() if j["state"] == "RUNNING"
                     and (name is None or j["name"] == name)), None)

    def vertex_metric(self, job_id: str, vertex_prefix: str, metric: str) -> float:
        """``metric`` summed over the subtasks of the job's vertex whose name starts with
        ``vertex_prefix`` (0 until the vertex has reported it)."""
        vertices = self.get(f"/jobs/{job_id}")["vertices"]
        vertex = next(v["id"] for v in vertices if v["name"].startswith(vertex_prefix))
        values = self.get(f"/jobs/{job_id}/vertices/{vertex}/subtasks/metrics"
                          f"?get={metric}&agg=sum")
        return float(values[0]["sum"]) if values else 0.0

    def records_read(self, job_id: str) -> int:
        """Records that the job's source (its first ``Source:`` vertex) has emitted."""
        return int(self.vertex_metric(job_id, "Source:", "numRecordsOut"))
