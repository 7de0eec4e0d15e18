"""Credentials pass through: the loop on a private stack whose broker wants SASL/PLAIN and whose
Redis wants a password. Clients without them are refused; with them every part works — the
producer, the features job's Kafka source and sinks (Java), the Feast writer, the training job's
source and sink (PyFlink), the scorer's follower and its Feast reads — and no log holds a
secret."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from rich.console import Console

from config import Settings
from connectors.kafka_config import admin_config
from features.online import user_row_time
from features.store import open_store
from streamrank import live
from streamrank.demo import backfill, live_settings, wait_for_model
from tests.integration.test_stack import free_ports, processes_of

pytestmark = pytest.mark.integration
KAFKA_SECRET = "k-s3cret-7Q"
REDIS_SECRET = "r-s3cret-9Z"
RANK_SECRET = "t-s3cret-4R"
ADMIN_SECRET = "a-s3cret-2M"
SECRETS = (KAFKA_SECRET, REDIS_SECRET, RANK_SECRET, ADMIN_SECRET)


@pytest.fixture
def secured(tmp_path: Path):  # noqa: ANN201 - Iterator[Settings]
    kafka, controller, redis_port, scorer = free_ports(4)
    settings = live_settings(Settings(
        run_dir=tmp_path / "run", kafka_bootstrap=f"127.0.0.1:{kafka}",
        kafka_controller_port=controller,
        redis_url=f"redis://:{REDIS_SECRET}@127.0.0.1:{redis_port}/0",
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="streamrank",
        kafka_sasl_password=KAFKA_SECRET, scorer_port=scorer, rank_token=RANK_SECRET,
        admin_token=ADMIN_SECRET))
    try:
        yield settings
    finally:
        live.down(settings)
        assert processes_of(settings.run_dir) == []


def test_credentials_reach_every_part_and_no_log(secured: Settings, tmp_path: Path) -> None:
    settings = secured
    live.up(settings, scorers=1)

    redis_port = int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=redis_port, socket_timeout=5).ping()
    anonymous = settings.model_copy(update={"kafka_security_protocol": "PLAINTEXT"})
    with pytest.raises(KafkaException):
        AdminClient(admin_config(anonymous)).list_topics(timeout=5)

    urls = live.wait_for_scorers(settings, 1)
    sent = backfill(settings, 1_500, tmp_path, Console())
    wait_for_model(settings, urls, Console())  # events → features job → examples → trainer → scorer
    bearer = {"Authorization": f"Bearer {RANK_SECRET}"}
    answer = httpx.post(f"{urls[0]}/rank", json={"user_id": "1", "items": ["i1", "i2"]},
                        headers=bearer, timeout=10).json()
    assert answer["model_version"] > 0 and answer["degraded"] is False, answer
    store = open_store(settings)
    with settings.sample_log.open() as sample:
        first = [next(sample).split(",", 1)[0] for _ in range(20)]
    users = [u for u in first if user_row_time(store, u) is not None]
    print(f"\n{sent} events through SASL; model version {answer['model_version']} served; "
          f"Feast rows for users {users}")
    assert users, "no user row reached Feast through the password"

    # No secret in what the scorer answers, errors included...
    url = urls[0]
    answers = [
        httpx.get(f"{url}/status", timeout=10), httpx.get(f"{url}/metrics", timeout=10),
        httpx.get(f"{url}/healthz", timeout=10),
        httpx.post(f"{url}/rank", json={"user_id": "1", "items": ["i1"]}, timeout=10),
        httpx.post(f"{url}/rank", json={"user_id": "1", "items": ["i1"]}, timeout=10,
                   headers={"Authorization": f"Bearer {RANK_SECRET}x"}),
        httpx.post(f"{url}/rank", content=b"{", headers=bearer, timeout=10),
        httpx.post(f"{url}/admin/pin", json={"version": 1}, timeout=10),
        httpx.post(f"{url}/admin/pin", json={"version": 10**9}, timeout=10,
                   headers={"Authorization": f"Bearer {ADMIN_SECRET}"}),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 401, 401, 422, 401, 409], \
        [(a.status_code, a.text[:100]) for a in answers]
    assert not [a.text for a in answers if any(x in a.text for x in SECRETS)]
    # ... nor in any log; a file of the run directory that holds one is the owner's alone
    logs = [p for p in settings.run_dir.joinpath("logs").rglob("*") if p.is_file()]
    assert logs and not [p for p in logs if any(x.encode() in p.read_bytes() for x in SECRETS)]
    holders = [p for p in settings.run_dir.rglob("*")
               if p.is_file() and p.stat().st_size < 1 << 20
               and any(x.encode() in p.read_bytes() for x in SECRETS)]
    assert not [p for p in holders if p.stat().st_mode & 0o077], holders
