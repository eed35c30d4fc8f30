#!/usr/bin/env bash
# The Python package, as CI checks it: the wheel built with maturin (release profile), installed
# into a fresh venv with nothing but its one dependency (no Rust toolchain involved) and
# imported there; then the tests (tests/test_scoring.py: the CLI, Scorer, Ray Data, Spark and
# --shard scoring one Parquet directory alike) in a venv with Ray and Spark, installed once
# (crates/pepnet-python/tests/requirements.txt) and reused after. Spark needs Java: installed
# when missing.
set -euo pipefail
cd "$(dirname "$0")/../../.."
VENV=.venv-python
REQS=crates/pepnet-python/tests/requirements.txt
if ! command -v java >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi
if [ ! -x "$VENV/bin/python" ] || ! cmp -s "$REQS" "$VENV/requirements.txt"; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -r "$REQS"
    cp "$REQS" "$VENV/requirements.txt"
fi
rm -f target/wheels/pepnet-*.whl
"$VENV/bin/maturin" build --release -m crates/pepnet-python/Cargo.toml --out target/wheels
wheel=$(ls target/wheels/pepnet-*.whl)

fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
python3 -m venv "$fresh/venv"
"$fresh/venv/bin/pip" install -q "$wheel"
(cd "$fresh" && "$fresh/venv/bin/python" -c \
    'import pepnet, pyarrow; print("fresh venv: pepnet", pepnet.__version__, "imports; exports", sorted(pepnet.__all__))')

"$VENV/bin/pip" install -q --force-reinstall --no-deps "$wheel"
cd crates/pepnet-python/tests
PEPNET_BIN="$PWD/../../../target/release/pepnet" "../../../$VENV/bin/python" -m pytest -q -p no:cacheprovider
