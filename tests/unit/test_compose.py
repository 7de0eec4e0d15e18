"""``docker-compose.yml`` against the configuration: the services the demo runs, every
``STREAMRANK_*`` variable a setting that loads, the published ports the local stack's defaults
on loopback, and the addresses inside pointing at the services that serve them."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from config import REPO_ROOT, Settings, load_settings
from config.settings import ENV_PREFIX

SERVICES = {"kafka", "redis", "jobmanager", "taskmanager", "submit", "writer", "scorer-1",
            "scorer-2"}
STREAMRANK = SERVICES - {"kafka", "redis"}
"""The services that run streamrank's image."""


def services() -> dict[str, dict[str, Any]]:
    """The compose file's services (anchors and merge keys resolved)."""
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]


def default(name: str) -> Any:
    """A setting's default (not what this process's environment says)."""
    return Settings.model_fields[name].default


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def loaded(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a container of ``service`` loads from its environment alone."""
    for key in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in service.get("environment", {}).items():
        monkeypatch.setenv(key, str(value))
    return load_settings()


def test_the_services_are_those_the_demo_runs() -> None:
    found = services()
    assert set(found) == SERVICES
    assert {name for name, s in found.items() if s.get("image") == "streamrank:local"} == STREAMRANK
    assert found["jobmanager"]["command"] == ["cluster", "run", "jobmanager"]
    assert found["taskmanager"]["command"] == ["cluster", "run", "taskmanager"]
    assert found["writer"]["command"] == ["job", "run", "writer"]
    assert found["scorer-1"]["command"] == found["scorer-2"]["command"] == ["serve"]
    submit = " ".join(found["submit"]["command"])
    assert "streamrank job submit features" in submit and "streamrank job submit training" in submit


def test_every_streamrank_variable_is_a_setting_that_loads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, service in services().items():
        names = [k for k in service.get("environment", {}) if k.startswith(ENV_PREFIX)]
        assert all(k.removeprefix(ENV_PREFIX).lower() in Settings.model_fields for k in names), name
        if name in STREAMRANK:
            with monkeypatch.context() as patch:
                settings = loaded(service, patch)
            assert settings.run_dir.as_posix() == service["volumes"][0].split(":")[1], name


def test_published_ports_are_the_local_stack_defaults_on_loopback() -> None:
    want = {"kafka": _port(default("kafka_bootstrap")),
            "redis": urlparse(default("redis_url")).port,
            "jobmanager": _port(default("flink_rest")),
            "scorer-1": default("scorer_port"), "scorer-2": default("scorer_port") + 1}
    published = {}
    for name, service in services().items():
        for mapping in service.get("ports", []):
            host, host_port, container_port = mapping.split(":")
            assert host == "127.0.0.1", (name, mapping)
            assert host_port == container_port, (name, mapping)
            published[name] = int(host_port)
    assert published == want


def test_addresses_inside_name_the_services_that_serve_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    found = services()
    for name in sorted(STREAMRANK):
        with monkeypatch.context() as patch:
            settings = loaded(found[name], patch)
        kafka = settings.kafka_bootstrap.rpartition(":")[0]
        assert kafka in found and urlparse(settings.redis_url).hostname in found, name
        assert settings.flink_rest.rpartition(":")[0] == "jobmanager"
        if name.startswith("scorer"):
            assert settings.scorer_host == "0.0.0.0"
            port = settings.scorer_port
            assert f"127.0.0.1:{port}:{port}" in found[name]["ports"]
    listeners = found["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert f"kafka:{_port(settings.kafka_bootstrap)}" in listeners
    assert f"127.0.0.1:{_port(default('kafka_bootstrap'))}" in listeners
    rest = found["jobmanager"]["ports"][0].split(":")[1]
    assert int(rest) == _port(settings.flink_rest)


def test_compose_validates_the_file() -> None:
    """``docker compose config`` (or the v1 ``docker-compose``) accepts the file, where one is
    installed (it needs no engine)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True, check=False).returncode == 0:
        cmd = ["docker", "compose", "config", "-q"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose", "config", "-q"]
    else:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
