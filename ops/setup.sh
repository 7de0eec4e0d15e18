#!/usr/bin/env bash
# Installs everything streamrank needs on a fresh machine; safe to run again (idempotent).
#   - redis-server from Debian's packages (when missing)
#   - .venv with the pinned Python packages (ops/constraints.txt) and streamrank in editable mode
#   - the Kafka broker jars and the Flink Kafka connector jars from Maven Central (ops/jars/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}

# Prerequisites: say which one is missing and what to install, before doing anything.
missing=()
if ! "$PY" -c 'import sys, venv; assert sys.version_info[:2] == (3, 11)' >/dev/null 2>&1; then
  missing+=("Python 3.11 with venv as '$PY' (Debian: python3.11 python3.11-venv; or set PYTHON=/path/to/python3.11)")
fi
if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|2[0-9])'; then
  missing+=("Java 17 or newer (Debian: openjdk-17-jdk-headless)")
fi
command -v mvn >/dev/null 2>&1 || missing+=("Maven (Debian: maven)")
command -v git >/dev/null 2>&1 || missing+=("git (Debian: git)")
if ! command -v redis-server >/dev/null 2>&1 && ! command -v apt-get >/dev/null 2>&1; then
  missing+=("redis-server (Debian: redis-server; this script installs it with apt-get where it can)")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: missing prerequisites:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 1
fi

if ! command -v redis-server >/dev/null 2>&1; then
  echo "setup: installing redis-server (Debian package)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q redis-server >/dev/null
fi

want=$(cat pyproject.toml ops/constraints.txt | sha256sum | cut -c1-64)
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
if [ "$(cat .venv/.installed 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages (first time takes a few minutes)"
  .venv/bin/pip install -q --disable-pip-version-check -c ops/constraints.txt -e .
  echo "$want" > .venv/.installed
fi

fetch_jars() {  # pom, target dir, extra maven flags
  if [ ! -f "$2/.complete" ]; then
    echo "setup: fetching jars for $1"
    rm -rf "$2"
    mvn -q -B -f "$1" dependency:copy-dependencies -DoutputDirectory="$PWD/$2" "${@:3}"
    touch "$2/.complete"
  fi
}
fetch_jars ops/pom-kafka.xml ops/jars/kafka -DincludeScope=runtime
fetch_jars ops/pom-flink.xml ops/jars/flink -DexcludeTransitive=true

# streamrank's Flink functions (ops/flink-udfs, Java 17) -> ops/jars/udfs/, rebuilt when their
# sources change
udfs_want=$(find ops/flink-udfs/pom.xml ops/flink-udfs/src tests/golden -type f \( -path 'ops/*' \
  -o -name '*.json*' \) -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
if [ "$(cat ops/jars/udfs/.built 2>/dev/null)" != "$udfs_want" ] \
    || [ ! -f ops/jars/udfs/streamrank-flink-udfs.jar ]; then
  echo "setup: building ops/flink-udfs"
  mvn -q -B -f ops/flink-udfs/pom.xml package
  mkdir -p ops/jars/udfs
  cp ops/flink-udfs/target/streamrank-flink-udfs.jar ops/jars/udfs/
  echo "$udfs_want" > ops/jars/udfs/.built
fi
echo "setup: ready"
