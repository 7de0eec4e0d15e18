"""The entry point of a job's own process (not a CLI for people: use ``streamrank job``).

    python -m jobs run NAME [--bounded] [--restore] [--mode thread|process]
        a detached run (what ``streamrank job run NAME --detach`` starts)
    python -m jobs execute NAME [--bounded] [--mode thread|process]
        what ``flink run`` executes on a cluster's client (``streamrank job submit``)

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
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.verb == "run":
        run = run_job(args.name, settings, bounded=args.bounded, restore=args.restore,
                      mode=args.mode)
        print(f"{run.name}: {run.state}")
    else:
        print(f"job id {execute(args.name, settings, bounded=args.bounded, mode=args.mode)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
