"""Soak: the live loop at a steady rate for ``--minutes`` with churning shoppers and items and
short TTLs, sampling every part's memory, to show that it levels off once TTLs expire state.

The loop (``streamrank up``: Kafka, Redis, the features job, the Feast writer, the training job,
one scorer, the supervisor) runs on free loopback ports in a fresh run directory and is
stopped by pid at the end. Traffic: ``--rate`` ranking requests per second, each ranking 10
items of the current population to a shopper of the current population and sending their
impressions, a click on one of them one time in five and a purchase one click in ten. The
population turns over: every ``--churn-s`` seconds a new set of ``--users`` shoppers and
``--items`` items replaces the old one, whose keys then expire (feature state after
``feature_state_ttl_ms`` of event time, Redis keys after as long in wall time).

Every ``--every-s`` seconds it records the resident memory (RSS) of each part's processes,
the features and training jobs' last checkpoint size (Flink state), Redis's ``used_memory``
and key count, and the scorer's served version. Output: ``soak.csv``, ``soak.png``, and a
table comparing each series' mean over the run's second fifth with its last fifth.

    .venv/bin/python bench/bench_soak.py --minutes 15 --out /tmp/soak
"""

from __future__ import annotations

import argparse
import csv
import random
import socket
import tempfile
import time
from pathlib import Path

import httpx
import redis
from support import console, markdown_table, table, write_report

from config import Settings
from connectors.events import Event
from connectors.producer import EventProducer
from jobs import processes
from jobs.launch import list_jobs
from jobs.metrics import FlinkRest
from streamrank import live
from streamrank.demo import live_settings

PARTS = ("kafka", "redis", "job features", "job writer", "job training", "scorer", "supervisor")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree_rss_mb(pid: int | None) -> float:
    """Resident memory of ``pid`` and all its descendants, MB (0 when not running)."""
    if pid is None:
        return 0.0
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
        todo += _children(p)
    return total / 1024


def part_pids(settings: Settings) -> dict[str, int | None]:
    """The pid at the top of each part of the loop."""
    return {
        "kafka": processes.read_pid(settings, "kafka"),
        "redis": processes.read_pid(settings, "redis"),
        "job features": processes.job_pid(settings, "features"),
        "job writer": processes.job_pid(settings, "writer"),
        "job training": processes.job_pid(settings, "training"),
        "scorer": live.scorer_pid(settings, settings.scorer_port),
        "supervisor": processes.read_pid(settings, live.SUPERVISOR),
    }


def checkpoint_mb(settings: Settings) -> dict[str, float]:
    """The last completed checkpoint's state size of each running Flink job, MB."""
    sizes: dict[str, float] = {}
    for entry in list_jobs(settings):
        if entry.name not in ("features", "training") or not entry.rest:
            continue
        try:
            rest = FlinkRest(entry.rest)
            job_id = rest.running_job()
            latest = rest.get(f"/jobs/{job_id}/checkpoints")["latest"]["completed"] if job_id else None
            sizes[entry.name] = (latest or {}).get("state_size", 0) / 1e6
        except Exception:  # noqa: BLE001 - a job between restarts has no figures this round
            continue
    return sizes


class Shoppers:
    """A population of ``users`` shoppers and ``items`` items, replaced every ``churn_s``."""

    def __init__(self, users: int, items: int, churn_s: float, seed: int = 7) -> None:
        self.users, self.items, self.churn_s = users, items, churn_s
        self.random = random.Random(seed)
        self.started = time.monotonic()
        self.sent = 0

    def generation(self) -> int:
        return int((time.monotonic() - self.started) // self.churn_s)

    def request(self) -> tuple[str, list[tuple[str, str]]]:
        g = self.generation()
        user = f"g{g}-u{self.random.randrange(self.users)}"
        picks = self.random.sample(range(self.items), 10)
        return user, [(f"g{g}-i{i}", f"c{i % 50}") for i in picks]

    def events(self, user: str, ranked: list[tuple[str, str]], request_id: str) -> list[Event]:
        now = time.time_ns() // 1_000_000
        out = [Event(event_id=f"{request_id}-{p}", event_type="impression", user_id=user,
                     item_id=item, category_id=cat, request_id=request_id, position=p,
                     event_time=now) for p, (item, cat) in enumerate(ranked)]
        if self.random.random() < 0.2:
            p = min(int(self.random.expovariate(0.5)), len(ranked) - 1)
            item, cat = ranked[p]
            out.append(Event(event_id=f"{request_id}-c", event_type="click", user_id=user,
                             item_id=item, category_id=cat, request_id=request_id, position=p,
                             event_time=now + 1))
            if self.random.random() < 0.1:
                out.append(Event(event_id=f"{request_id}-b", event_type="purchase",
                                 user_id=user, item_id=item, category_id=cat,
                                 request_id=request_id, event_time=now + 2))
        self.sent += len(out)
        return out


def sample(settings: Settings, client: redis.Redis, url: str, t0: float) -> dict[str, float]:
    row: dict[str, float] = {"t_s": round(time.monotonic() - t0, 1)}
    for part, pid in part_pids(settings).items():
        row[f"rss {part}"] = round(tree_rss_mb(pid), 1)
    for job, mb in checkpoint_mb(settings).items():
        row[f"state {job}"] = round(mb, 2)
    info = client.info("memory")
    row["redis used"] = round(info["used_memory"] / 1e6, 1)
    row["redis keys"] = float(client.dbsize())
    try:
        row["version"] = float(httpx.get(f"{url}/status", timeout=2).json()["version"])
    except httpx.HTTPError:
        row["version"] = float("nan")
    return row


def run(minutes: float, rate: float, users: int, items: int, churn_s: float, every_s: float,
        ttl_s: int, out: Path) -> list[dict[str, float]]:
    run_dir = Path(tempfile.mkdtemp(prefix="soak-")) / "run"
    redis_port = free_port()
    settings = live_settings(Settings(
        run_dir=run_dir, kafka_bootstrap=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(), redis_url=f"redis://127.0.0.1:{redis_port}/0",
        scorer_port=free_port(), feature_state_ttl_ms=ttl_s * 1000))
    rows: list[dict[str, float]] = []
    try:
        console.print(f"soak: starting the loop in {run_dir}")
        live.up(settings, scorers=1)
        url = live.wait_for_scorers(settings, 1)[0]
        client = redis.Redis(host="127.0.0.1", port=redis_port)
        shoppers = Shoppers(users, items, churn_s)
        http = httpx.Client(timeout=5)
        t0 = time.monotonic()
        next_sample = t0
        end = t0 + minutes * 60
        with EventProducer(settings) as producer:
            k = 0
            while (now := time.monotonic()) < end:
                if now >= next_sample:
                    rows.append(sample(settings, client, url, t0))
                    last = rows[-1]
                    console.print(f"{last['t_s']:7.0f} s  events {shoppers.sent:,}  "
                                  f"version {last['version']:.0f}  redis {last['redis used']} MB "
                                  f"{last['redis keys']:.0f} keys  scorer "
                                  f"{last['rss scorer']} MB  training {last['rss job training']} MB")
                    next_sample += every_s
                user, candidates = shoppers.request()
                request_id = f"soak-{k}"
                try:
                    answer = http.post(f"{url}/rank", json={"user_id": user, "items": [
                        {"item_id": i, "category_id": c} for i, c in candidates]}).json()
                    order = {i["item_id"]: n for n, i in enumerate(answer.get("items", []))}
                    candidates.sort(key=lambda ic: order.get(ic[0], 0))
                except httpx.HTTPError:
                    pass  # the loop heals; the events still flow
                for event in shoppers.events(user, candidates, request_id):
                    producer.send(event)
                k += 1
                time.sleep(max(0.0, t0 + k / rate - time.monotonic()))
    finally:
        live.down(settings)
    write_outputs(rows, out)
    return rows


def write_outputs(rows: list[dict[str, float]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    columns = sorted({c for r in rows for c in r}, key=lambda c: (c != "t_s", c))
    with (out / "soak.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 11), sharex=True)
    minutes = [r["t_s"] / 60 for r in rows]
    for c in columns:
        if c.startswith("rss "):
            axes[0].plot(minutes, [r.get(c, float("nan")) for r in rows], label=c[4:])
        elif c.startswith("state ") or c == "redis used":
            axes[1].plot(minutes, [r.get(c, float("nan")) for r in rows], label=c)
    axes[2].plot(minutes, [r.get("redis keys", float("nan")) for r in rows], label="redis keys")
    axes[0].set_ylabel("RSS, MB")
    axes[1].set_ylabel("MB")
    axes[2].set_ylabel("keys")
    axes[2].set_xlabel("minutes")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("soak: memory of each part over time")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=100)

    fifth = max(1, len(rows) // 5)
    early, late = rows[fifth:2 * fifth], rows[-fifth:]

    def mean(rs: list[dict[str, float]], c: str) -> float:
        values = [r[c] for r in rs if c in r and r[c] == r[c]]
        return sum(values) / len(values) if values else float("nan")

    summary = [[c, f"{mean(early, c):.1f}", f"{mean(late, c):.1f}",
                f"{mean(late, c) / mean(early, c):.2f}" if mean(early, c) else "-"]
               for c in columns if c not in ("t_s", "version")]
    heads = ["series", "2nd fifth mean", "last fifth mean", "last / 2nd"]
    console.print(table("soak: does memory level off?", heads, summary))
    versions = [r["version"] for r in rows if r["version"] == r["version"]]
    lines = [f"{len(rows)} samples over {rows[-1]['t_s'] / 60:.1f} min; versions served "
             f"{versions[0]:.0f} → {versions[-1]:.0f}", "", *markdown_table(heads, summary)]
    write_report(out, "soak.md", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=20.0, help="ranking requests per second")
    parser.add_argument("--users", type=int, default=2_000, help="shoppers per generation")
    parser.add_argument("--items", type=int, default=5_000, help="items per generation")
    parser.add_argument("--churn-s", type=float, default=120.0)
    parser.add_argument("--ttl-s", type=int, default=180, help="feature state and Redis key TTL")
    parser.add_argument("--every-s", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path(".streamrank/reports/soak"))
    args = parser.parse_args()
    run(args.minutes, args.rate, args.users, args.items, args.churn_s, args.every_s,
        args.ttl_s, args.out)


if __name__ == "__main__":
    main()
