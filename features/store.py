"""The Feast store of a run: ``feature_store.yaml`` rendered from the config, apply, open.

Layout under ``<run_dir>/feast/``: ``feature_store.yaml``, ``registry.db`` (file registry) and
``offline/<view>/`` (parquet logs, the views' batch sources). The online store is Redis at
``settings.redis_url``; the declarations live in ``features/feature_repo``.

Choices (Feast 0.67):

* ``entity_key_serialization_version: 3`` (versions below 3 are deprecated).
* Registry ``cache_ttl_seconds: 3600`` in ``sync`` mode: readers and writers use the cached
  registry and notice a re-apply by the file's mtime; nothing refreshes it per write
  (:class:`features.writer.FeastStoreWriter` resolves its views once: build a new one after a
  re-apply that changes a view's schema).
* ``skip_dedup: true``: Feast's Redis writer would otherwise read every key's stored timestamp
  before writing (a second round trip) and drop a row whose timestamp equals the stored one,
  which loses same-instant updates (Taobao times have one-second resolution) and late events
  (rows carry the key's latest event time). Each key's rows come in order from one partition
  of ``features.rows`` (its key is the row's key) to one Feast writer (:mod:`jobs.feast_writer`),
  and never go back in time, and :class:`features.writer.FeastStoreWriter` keeps the
  newest row of a key within a batch.
* ``key_ttl_seconds``: a Redis key expires after ``feature_state_ttl_ms`` without a write.
  Feast sends one EXPIRE per written row for it: about a fifth of its own per-row write work
  on this machine (the view TTL alone would hide stale rows from readers, but never free them).
"""

from __future__ import annotations

import copy
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml
from feast import FeatureStore, FileSource, RepoConfig

from config import Settings
from features.feature_repo import repo

REPO_DIR = Path(repo.__file__).resolve().parent
"""The feature repository (``features/feature_repo``)."""
PROJECT = "streamrank"
REGISTRY_CACHE_TTL_S = 3600


def feast_dir(settings: Settings) -> Path:
    """``<run_dir>/feast``, absolute."""
    return (settings.run_dir / "feast").resolve()


def offline_dir(settings: Settings) -> Path:
    """Where the views' parquet logs live: ``<run_dir>/feast/offline``."""
    return feast_dir(settings) / "offline"


def redis_connection_string(redis_url: str) -> str:
    """Feast's Redis ``connection_string`` (``host:port,db=N,...``) for a ``redis://`` URL.

    >>> redis_connection_string("redis://127.0.0.1:6379/0")
    '127.0.0.1:6379,db=0'
    >>> redis_connection_string("rediss://:s3cret@cache.example:6380/2")
    'cache.example:6380,db=2,password=s3cret,ssl=true'
    """
    url = urlparse(redis_url)
    if url.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// URL: {redis_url!r}")
    parts = [f"{url.hostname or '127.0.0.1'}:{url.port or 6379}",
             f"db={int(url.path.lstrip('/') or 0)}"]
    if url.username:
        parts.append(f"username={unquote(url.username)}")
    if url.password:
        parts.append(f"password={unquote(url.password)}")
    if url.scheme == "rediss":
        parts.append("ssl=true")
    return ",".join(parts)


def feature_store_config(settings: Settings) -> dict[str, Any]:
    """The settings of ``feature_store.yaml`` as a dict (what :class:`feast.RepoConfig` takes)."""
    return {
        "project": PROJECT,
        "provider": "local",
        "repo_path": str(REPO_DIR),
        "registry": {
            "registry_type": "file",
            "path": str(feast_dir(settings) / "registry.db"),
            "cache_ttl_seconds": REGISTRY_CACHE_TTL_S,
            "cache_mode": "sync",
        },
        "online_store": {
            "type": "redis",
            "connection_string": redis_connection_string(settings.redis_url),
            "key_ttl_seconds": settings.feature_state_ttl_ms // 1000,
            "skip_dedup": True,
        },
        "offline_store": {"type": "file"},
        "entity_key_serialization_version": 3,
    }


def render_feature_store_yaml(settings: Settings) -> str:
    """The ``feature_store.yaml`` of this run (absolute paths, so any working directory works).

    >>> local = Settings(run_dir=Path("/tmp/run"), redis_url="redis://127.0.0.1:6379/0")
    >>> text = render_feature_store_yaml(local)
    >>> cfg = yaml.safe_load(text)
    >>> cfg["online_store"]["connection_string"], cfg["registry"]["path"]
    ('127.0.0.1:6379,db=0', '/tmp/run/feast/registry.db')
    """
    return yaml.safe_dump(feature_store_config(settings), sort_keys=False)


def write_feature_store_yaml(settings: Settings) -> Path:
    """Write ``<run_dir>/feast/feature_store.yaml`` (atomically, readable by the owner alone:
    it holds the Redis URL with any password) and return its path."""
    path = feast_dir(settings) / "feature_store.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)
    tmp.write_text(render_feature_store_yaml(settings))
    tmp.replace(path)
    return path


def open_store(settings: Settings) -> FeatureStore:
    """A FeatureStore on this run's registry and Redis (cheap; the registry stays cached).

    Does not touch the registry until first use; :func:`apply_repo` must have run once.
    """
    config = RepoConfig(**feature_store_config(settings))
    return FeatureStore(repo_path=str(REPO_DIR), config=config)


def repo_objects(settings: Settings) -> list[Any]:
    """The entities, feature views and feature service of ``features/feature_repo``, with the
    views' batch sources rooted in the run directory and their TTL ``feature_state_ttl_ms``
    (the repo's own declarations keep :data:`features.feature_repo.repo.TTL`, the default).

    >>> views = repo_objects(Settings(run_dir=Path("/tmp/run"), feature_state_ttl_ms=3_600_000))
    >>> {str(v.ttl) for v in views if hasattr(v, "ttl")}
    {'1:00:00'}
    """
    views = copy.deepcopy([repo.user_features, repo.item_features, repo.user_category_features])
    for view in views:
        view.ttl = timedelta(milliseconds=settings.feature_state_ttl_ms)
        source = view.batch_source
        assert isinstance(source, FileSource)  # shared with the view's push source
        source.file_options.uri = str(offline_dir(settings) / source.file_options.uri)
        Path(source.file_options.uri).mkdir(parents=True, exist_ok=True)
    return [repo.user, repo.item, repo.category, *views, repo.ranker]


def apply_repo(settings: Settings) -> FeatureStore:
    """Register the feature repo for this run (idempotent; what ``feast apply`` does).

    Writes ``feature_store.yaml``, creates the offline directories and applies the entities,
    feature views and feature service; Redis needs no set-up. Returns the store.
    """
    write_feature_store_yaml(settings)
    store = open_store(settings)
    store.apply(repo_objects(settings))
    return store
