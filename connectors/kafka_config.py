"""Kafka client settings for streamrank's producers, consumers and admin clients, and for the
Flink jobs' Java sources and sinks (one place, credentials included)."""

from __future__ import annotations

from typing import Any

from config import KafkaSettings

_JAAS_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def _uses_sasl(settings: KafkaSettings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL")


def _uses_tls(settings: KafkaSettings) -> bool:
    return settings.kafka_security_protocol.endswith("SSL")


def _password(settings: KafkaSettings) -> str:
    if settings.kafka_sasl_password is None or not settings.kafka_sasl_username:
        raise ValueError(f"kafka_security_protocol {settings.kafka_security_protocol} needs "
                         "STREAMRANK_KAFKA_SASL_USERNAME and STREAMRANK_KAFKA_SASL_PASSWORD")
    return settings.kafka_sasl_password.get_secret_value()


def security_config(settings: KafkaSettings) -> dict[str, Any]:
    """librdkafka's security settings (empty for ``PLAINTEXT``).

    >>> from pydantic import SecretStr
    >>> s = KafkaSettings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="app",
    ...                   kafka_sasl_password=SecretStr("pw"))
    >>> sorted(security_config(s))
    ['sasl.mechanism', 'sasl.password', 'sasl.username', 'security.protocol']
    >>> security_config(KafkaSettings())
    {}
    """
    if settings.kafka_security_protocol == "PLAINTEXT":
        return {}
    config: dict[str, Any] = {"security.protocol": settings.kafka_security_protocol}
    if _uses_sasl(settings):
        config |= {"sasl.mechanism": settings.kafka_sasl_mechanism,
                   "sasl.username": settings.kafka_sasl_username,
                   "sasl.password": _password(settings)}
    if _uses_tls(settings) and settings.kafka_ssl_ca_location:
        config["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return config


def java_security_properties(settings: KafkaSettings) -> dict[str, str]:
    """The same settings for Kafka's Java clients (the Flink jobs' sources and sinks).

    >>> from pydantic import SecretStr
    >>> s = KafkaSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="app",
    ...                   kafka_sasl_password=SecretStr('p"w'), kafka_ssl_ca_location="/ca.pem")
    >>> p = java_security_properties(s)
    >>> p["sasl.jaas.config"]
    'org.apache.kafka.common.security.plain.PlainLoginModule required username="app" password="p\\\\"w";'
    >>> p["ssl.truststore.type"], p["ssl.truststore.location"]
    ('PEM', '/ca.pem')
    """
    if settings.kafka_security_protocol == "PLAINTEXT":
        return {}
    props = {"security.protocol": settings.kafka_security_protocol}
    if _uses_sasl(settings):
        def quoted(value: str) -> str:
            return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

        module = _JAAS_MODULES[settings.kafka_sasl_mechanism]
        props |= {"sasl.mechanism": settings.kafka_sasl_mechanism,
                  "sasl.jaas.config": f"{module} required username="
                                      f"{quoted(settings.kafka_sasl_username)} "
                                      f"password={quoted(_password(settings))};"}
    if _uses_tls(settings) and settings.kafka_ssl_ca_location:
        props |= {"ssl.truststore.type": "PEM",
                  "ssl.truststore.location": settings.kafka_ssl_ca_location}
    return props


def admin_config(settings: KafkaSettings) -> dict[str, Any]:
    """AdminClient settings."""
    return {"bootstrap.servers": settings.kafka_bootstrap, **security_config(settings)}


def producer_config(settings: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """An idempotent producer (acks=all, ordered per partition) batching for throughput."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        **security_config(settings),
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
        "message.max.bytes": settings.max_message_bytes + 100_000,
        **overrides,
    }


def consumer_config(settings: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer reading from the earliest offset with its own group."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        **security_config(settings),
        "group.id": group_id,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        **overrides,
    }
