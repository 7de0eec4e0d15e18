"""The entry point of a job's own process (not a CLI for people: use ``streamrank job``).

    python -m jobs run NAME [--bounded] [--restore] [--mode thread|process]
        a detached run (what ``streamrank job run NAME --detach`` starts)
    python -m jobs execute NAME --jobmanager HOST:PORT [--from-savepoint URL] [--bounded]
            [--mode thread|process]
        builds the job and submits it to a cluster (what ``streamrank job submit`` runs)

Settings come from ``STREAMRANK_*`` environment variables (see :mod:`config`).
"""

from __future__ import annotations

import argparse
import sys

from config import load_settings
from jobs.launch import JOBS, execute, run_job


def main(argv: list[str] | None = None) -> int:
    """Run or execute the job named in ``argv``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m jobs")
    parser.add_argument("verb", choices=("run", "execute"))
    parser.add_argument("name", choices=sorted(JOBS))
    parser.add_argument("--bounded", action="store_true")
    parser.add_argument("--restore", action="store_true")
    parser.add_argument("--mode", choices=("thread", "process"), default="thread")
    parser.add_argument("--jobmanager", help="execute: HOST:PORT of the cluster's REST API")
    parser.add_argument("--from-savepoint", help="execute: resume from this savepoint (URL)")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.verb == "run":
        run = run_job(args.name, settings, bounded=args.bounded, restore=args.restore,
                      mode=args.mode)
        print(f"{run.name}: {run.state}")
        return 0
    if not args.jobmanager:
        parser.error("execute needs --jobmanager HOST:PORT")
    try:
        job_id = execute(args.name, settings, args.jobmanager, bounded=args.bounded,
                         mode=args.mode, restore_from=args.from_savepoint)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"job id {job_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
