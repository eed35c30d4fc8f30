"""Shared fixtures: the built-in example model, and a Parquet directory of 8 files with a row key,
made by the pepnet binary the tests built (PEPNET_BIN, default target/release/pepnet)."""

import os
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[3]
MODEL = ROOT / "examples" / "kuairand"
PEPNET = os.environ.get("PEPNET_BIN", str(ROOT / "target" / "release" / "pepnet"))
FILES = 8
ROWS_PER_FILE = 700  # not a multiple of any batch size used


def pepnet(*args, check=True):
    """Runs the pepnet binary; its completed process."""
    return subprocess.run([PEPNET, *map(str, args)], capture_output=True, text=True, check=check)


@pytest.fixture(scope="session")
def model():
    return str(MODEL)


@pytest.fixture(scope="session")
def parquet_dir(tmp_path_factory):
    """8 Parquet files of random input rows, each with a unique int64 `request_id` and a string
    `user_key` that the scoring carries through."""
    base = tmp_path_factory.mktemp("data")
    whole = base / "whole.parquet"
    pepnet("gen-input", "--model", MODEL, "--rows", FILES * ROWS_PER_FILE, "--output", whole, "--seed", 7)
    table = pq.read_table(whole)
    n = table.num_rows
    table = table.append_column("request_id", pa.array(range(10_000, 10_000 + n), pa.int64()))
    table = table.append_column("user_key", pa.array([f"k{i}" for i in range(n)], pa.string()))
    parts = base / "parts"
    parts.mkdir()
    for i in range(FILES):
        pq.write_table(table.slice(i * ROWS_PER_FILE, ROWS_PER_FILE), parts / f"part-{i:04d}.parquet")
    pq.write_table(table, base / "all.parquet")
    return base
