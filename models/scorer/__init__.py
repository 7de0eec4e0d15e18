"""The scorer service behind ``streamrank serve``: stateless, hot-reloading, batching.

* :mod:`models.scorer.service`: which model version serves (following, quality guard, pin,
  rollback), on top of :class:`models.follower.ModelFollower`. Pure: no Kafka, no HTTP.
* :mod:`models.scorer.reloader`: the only I/O of the model side, a background thread that
  bootstraps from the snapshot store and follows ``model.deltas``.
* :mod:`models.scorer.batcher`: gathers concurrent requests into one forward pass.
* :mod:`models.scorer.api`: the HTTP request and response bodies.
* :mod:`models.scorer.metrics`: the Prometheus metrics.
* :mod:`models.scorer.app`: the FastAPI app and ``serve``.
* :mod:`models.scorer.registry`: scorers register under ``<run_dir>/scorers/``; the admin
  client the CLI uses.
"""
