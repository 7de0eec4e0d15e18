"""The local stack: a single-node Kafka broker (KRaft) and a Redis server, on loopback.

Processes are started detached with their pids recorded under ``<run_dir>/pids``; ``down``
stops exactly those pids (never by name). Broker and Redis data live under the run directory.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from config import Settings
from connectors.kafka_config import admin_config, java_security_properties
from jobs import processes

ROOT = Path(__file__).resolve().parent.parent
KAFKA_LIBS = ROOT / "ops" / "jars" / "kafka"

LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
"""


@dataclass(frozen=True)
class Service:
    """A process of the stack and where it listens."""

    name: str
    host: str
    port: int


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def services(settings: Settings) -> list[Service]:
    """The services of the local stack, in start order."""
    redis = urlparse(settings.redis_url)
    return [
        Service("kafka", *_host_port(settings.kafka_bootstrap)),
        Service("redis", redis.hostname or "127.0.0.1", redis.port or 6379),
    ]


def listening(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _listener_lines(settings: Settings, host: str, port: int) -> list[str]:
    """The client listener: PLAINTEXT, or SASL_PLAINTEXT with PLAIN and the configured user."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        client = ["inter.broker.listener.name=PLAINTEXT"]
    elif protocol == "SASL_PLAINTEXT" and settings.kafka_sasl_mechanism == "PLAIN":
        jaas = java_security_properties(settings)["sasl.jaas.config"].rstrip(";")
        user = settings.kafka_sasl_username
        password = settings.kafka_sasl_password.get_secret_value()  # type: ignore[union-attr]
        quoted = '"' + password.replace("\\", "\\\\").replace('"', '\\"') + '"'
        client = ["inter.broker.listener.name=SASL_PLAINTEXT",
                  "sasl.enabled.mechanisms=PLAIN",
                  "sasl.mechanism.inter.broker.protocol=PLAIN",
                  f"listener.name.sasl_plaintext.plain.sasl.jaas.config={jaas} user_{user}={quoted};"]
    else:
        raise RuntimeError(
            f"the local broker runs PLAINTEXT or SASL_PLAINTEXT with PLAIN, not {protocol} with "
            f"{settings.kafka_sasl_mechanism}: point STREAMRANK_KAFKA_BOOTSTRAP at your broker")
    return [f"listeners={protocol}://{host}:{port},"
            f"CONTROLLER://{host}:{settings.kafka_controller_port}",
            f"advertised.listeners={protocol}://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            f"listener.security.protocol.map={protocol}:{protocol},CONTROLLER:PLAINTEXT",
            *client]


def _private_file(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` readable by its owner only (it may hold credentials)."""
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(text)
    return path


def _kafka_config(settings: Settings) -> Path:
    host, port = _host_port(settings.kafka_bootstrap)
    data = settings.path("kafka", "data")
    cfg = _private_file(settings.path("kafka", "server.properties"), "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{host}:{settings.kafka_controller_port}",
        *_listener_lines(settings, host, port),
        f"log.dirs={data.resolve()}",
        "num.partitions=1",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "group.initial.rebalance.delay.ms=0",
        "auto.create.topics.enable=false",
        "log.retention.hours=24",
        "",
    ]))
    settings.path("kafka", "log4j2.properties").write_text(
        LOG4J2.format(log=settings.path("logs", "kafka.log").resolve())
    )
    return cfg


def _java(settings: Settings, main: str, *args: str) -> list[str]:
    log4j = settings.path("kafka", "log4j2.properties").resolve()
    return ["java", "-Xms256m", "-Xmx1g", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", f"{KAFKA_LIBS}/*", main, *args]


def _start_kafka(settings: Settings) -> int:
    if not KAFKA_LIBS.is_dir():
        raise RuntimeError(f"Kafka jars missing in {KAFKA_LIBS}: run `make setup` first")
    cfg = _kafka_config(settings)
    data = settings.path("kafka", "data")
    if not (data / "meta.properties").exists():
        subprocess.run(
            _java(settings, "kafka.tools.StorageTool", "format", "-t", str(uuid.uuid4()),
                  "-c", str(cfg.resolve())),
            check=True, capture_output=True,
        )
    return _spawn(settings, "kafka", _java(settings, "kafka.Kafka", str(cfg.resolve())))


def _redis_auth(redis_url: str) -> str:
    """redis.conf lines requiring the credentials of ``redis_url`` (none without a password).

    >>> _redis_auth("redis://127.0.0.1:6379/0")
    ''
    >>> _redis_auth("redis://:s3cret@127.0.0.1:6379/0")
    'requirepass s3cret\\n'
    >>> _redis_auth("redis://app:s3cret@127.0.0.1:6379/0")
    'user default off\\nuser app on >s3cret ~* &* +@all\\n'
    """
    url = urlparse(redis_url)
    password = unquote(url.password or "")
    if not password:
        return ""
    if any(c.isspace() for c in password):
        raise ValueError("the Redis password in STREAMRANK_REDIS_URL may not hold whitespace")
    user = unquote(url.username or "")
    if user and user != "default":
        return f"user default off\nuser {user} on >{password} ~* &* +@all\n"
    return f"requirepass {password}\n"


def _start_redis(settings: Settings, svc: Service) -> int:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server not found: run `make setup` first")
    data = settings.path("redis", "dump.rdb").parent.resolve()
    conf = _private_file(settings.path("redis", "redis.conf"), _redis_auth(settings.redis_url))
    return _spawn(settings, "redis", [exe, str(conf.resolve()), "--bind", svc.host,
                                      "--port", str(svc.port), "--dir", str(data),
                                      "--save", "60 1000", "--protected-mode", "yes",
                                      "--daemonize", "no"])


def _spawn(settings: Settings, name: str, cmd: list[str]) -> int:
    log = open(settings.path("logs", f"{name}.out"), "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    processes.pid_file(settings, name).write_text(f"{proc.pid}\n")
    return proc.pid


def _kafka_ready(settings: Settings) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        md = AdminClient(admin_config(settings)).list_topics(timeout=2)
    except Exception:
        return False
    return bool(md.brokers)


def up(settings: Settings, timeout_s: float = 90.0) -> dict[str, str]:
    """Start whatever of the stack is not running, wait until each answers, create topics.

    Returns per service ``started`` or ``running`` (already up, ours or not).
    """
    from connectors.admin import ensure_topics

    state: dict[str, str] = {}
    for svc in services(settings):
        if processes.read_pid(settings, svc.name) or listening(svc.host, svc.port):
            state[svc.name] = "running"
            continue
        if svc.name == "kafka":
            _start_kafka(settings)
        else:
            _start_redis(settings, svc)
        state[svc.name] = "started"
    deadline = time.monotonic() + timeout_s
    for svc in services(settings):
        while not listening(svc.host, svc.port):
            pid = processes.read_pid(settings, svc.name)
            if state[svc.name] == "started" and pid is None:
                raise RuntimeError(f"{svc.name} exited; see {settings.path('logs', svc.name + '.out')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{svc.name} did not answer on {svc.host}:{svc.port}")
            time.sleep(0.3)
    while not _kafka_ready(settings):
        if time.monotonic() > deadline:
            raise TimeoutError("Kafka broker did not become ready")
        time.sleep(0.5)
    ensure_topics(settings)
    return state


def down(settings: Settings, timeout_s: float = 30.0) -> dict[str, str]:
    """Stop what this run directory started, by recorded pid: its detached jobs first (they
    need the broker to stop cleanly), then the services. Returns what happened to each."""
    result: dict[str, str] = {}
    for name, pid in processes.detached_jobs(settings).items():
        processes.pid_file(settings, processes.JOB_PREFIX + name).unlink(missing_ok=True)
        if pid is not None:
            processes.stop(pid, timeout_s)
            result[f"job {name}"] = f"stopped (pid {pid})"
    for svc in reversed(services(settings)):
        pid = processes.read_pid(settings, svc.name)
        processes.pid_file(settings, svc.name).unlink(missing_ok=True)
        if pid is None:
            result[svc.name] = "not running"
            continue
        processes.stop(pid, timeout_s, group=False)
        result[svc.name] = f"stopped (pid {pid})"
    return result


def status(settings: Settings) -> list[dict[str, object]]:
    """One row per service (name, address, pid when ours, whether it answers), then one per
    detached job of this run directory (its pid, or none when it has exited)."""
    rows: list[dict[str, object]] = [
        {"service": s.name, "address": f"{s.host}:{s.port}",
         "pid": processes.read_pid(settings, s.name), "answers": listening(s.host, s.port)}
        for s in services(settings)
    ]
    rows += [{"service": f"job {name}", "address": "", "pid": pid, "answers": pid is not None}
             for name, pid in processes.detached_jobs(settings).items()]
    return rows
