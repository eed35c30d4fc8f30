"""One Parquet directory scored five ways, every row's scores equal bit for bit: (a) `pepnet score`
on the files' concatenation, (b) `pepnet.Scorer.score` per file, (c) Ray Data with 2 actors,
(d) Spark local[2] with mapInArrow, (e) `pepnet score --shard i/3` for i = 0, 1, 2. Then bad input
through Python, and the inputs the Scorer takes (Table, pandas, dict of NumPy arrays)."""

import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pepnet
from conftest import FILES, ROWS_PER_FILE, pepnet as run_pepnet

TASKS = ["click", "like", "follow", "comment", "forward", "long_view"]


def by_key(table):
    """request_id -> the row's scores as uint32 bits (exact comparison), plus its user_key."""
    table = table.sort_by("request_id")
    bits = np.stack(
        [np.asarray(table.column(t).to_numpy(), dtype=np.float32).view(np.uint32) for t in TASKS], axis=1
    )
    return table.column("request_id").to_pylist(), table.column("user_key").to_pylist(), bits


@pytest.fixture(scope="module")
def reference(model, parquet_dir):
    """(a) the CLI on the concatenation."""
    out = parquet_dir / "cli-all.parquet"
    run_pepnet("score", "--model", model, "--input", parquet_dir / "all.parquet", "--output", out,
               "--carry", "request_id,user_key", "--batch-size", "1000", "--quiet")
    ref = by_key(pq.read_table(out))
    assert len(ref[0]) == FILES * ROWS_PER_FILE
    return ref


def assert_same(got, want):
    assert got[0] == want[0], "the same rows, keys carried through"
    assert got[1] == want[1]
    assert np.array_equal(got[2], want[2]), "scores equal bit for bit"


def test_scorer_per_file_equals_the_cli(model, parquet_dir, reference):
    scorer = pepnet.Scorer(model, batch_size=512)
    assert scorer.tasks == TASKS and "tab" in scorer.features
    outs = []
    for path in sorted((parquet_dir / "parts").glob("*.parquet")):
        table = pq.read_table(path)
        out = scorer.score(table)
        assert isinstance(out, pa.RecordBatch)
        assert out.schema.names == ["request_id", "user_key", *TASKS]
        assert out.schema == scorer.output_schema(table.schema)
        outs.append(out)
    assert_same(by_key(pa.Table.from_batches(outs)), reference)
    stats = scorer.stats()
    assert stats["rows"] == FILES * ROWS_PER_FILE and stats["batches"] == FILES


def test_shards_cover_every_file_once_and_equal_the_cli(model, parquet_dir, reference):
    outs = []
    for i in range(3):
        out_dir = parquet_dir / f"shard-out"
        run = run_pepnet("score", "--model", model, "--input", parquet_dir / "parts", "--output", out_dir,
                         "--shard", f"{i}/3", "--carry", "request_id,user_key", "--quiet")
        assert f"(share {i} of 3)" in run.stderr, run.stderr
    files = sorted((parquet_dir / "shard-out").glob("*.parquet"))
    assert [f.name for f in files] == [f"part-{i:04d}.parquet" for i in range(FILES)]
    assert_same(by_key(pa.concat_tables([pq.read_table(f) for f in files])), reference)
    # A rerun of one task replaces only its own outputs.
    before = {f.name: f.stat().st_mtime_ns for f in files}
    run_pepnet("score", "--model", model, "--input", parquet_dir / "parts" / "part-*.parquet",
               "--output", parquet_dir / "shard-out", "--shard", "1/3", "--carry", "request_id,user_key",
               "--quiet")
    changed = {f.name for f in files if f.stat().st_mtime_ns != before[f.name]}
    assert changed == {f"part-{i:04d}.parquet" for i in range(1, FILES, 3)}


def test_ray_data_with_two_actors_equals_the_cli(model, parquet_dir, reference):
    ray = pytest.importorskip("ray")
    import pepnet.ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        ds = ray.data.read_parquet(str(parquet_dir / "parts"), override_num_blocks=FILES).map_batches(
            pepnet.ray.Score,
            fn_constructor_kwargs={"model_dir": model},
            batch_format="pyarrow",
            batch_size=300,
            concurrency=2,
            num_cpus=0.5,
        )
        got = pa.concat_tables(ray.get(ds.to_arrow_refs()))
    finally:
        ray.shutdown()
    assert_same(by_key(got), reference)


def test_spark_map_in_arrow_equals_the_cli(model, parquet_dir, reference):
    pyspark = pytest.importorskip("pyspark")
    if os.system("java -version > /dev/null 2>&1") != 0:
        pytest.skip("no Java for Spark")
    from pyspark.sql import SparkSession

    import pepnet.spark

    # The workers run this interpreter, the one pepnet is installed in.
    os.environ["PYSPARK_PYTHON"] = sys.executable

    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    try:
        df = spark.read.parquet(str(parquet_dir / "parts"))
        stats = pepnet.spark.stats_accumulator(spark.sparkContext)
        fn = pepnet.spark.score_partitions(model, stats=stats, batch_size=512)
        out = df.mapInArrow(fn, pepnet.spark.output_schema(model, df.schema))
        got = out.toArrow() if hasattr(out, "toArrow") else pa.Table.from_pandas(out.toPandas())
        assert stats.value["rows"] == FILES * ROWS_PER_FILE, stats.value
    finally:
        spark.stop()
    got = got.cast(pa.schema([f if f.name not in TASKS else pa.field(f.name, pa.float32()) for f in got.schema]))
    assert_same(by_key(got), reference)


def test_other_inputs_score_alike(model, parquet_dir):
    table = pq.read_table(parquet_dir / "parts" / "part-0000.parquet")
    scorer = pepnet.Scorer(model)
    want = scorer.score(table)
    pandas = pytest.importorskip("pandas")
    from_pandas = scorer.score(table.to_pandas())
    for t in TASKS:
        assert np.array_equal(from_pandas.column(t).to_numpy(), want.column(t).to_numpy())
    # A dict of NumPy arrays (single-valued features only: drop the lists, use a smaller model
    # input set through `carry=[]`).
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.schema.names}
    for multi in ("tag_ids", "recent_tag_ids"):
        columns[multi] = table.column(multi).to_pylist()
    from_dict = scorer.score(columns, carry=[])
    assert from_dict.schema.names == TASKS
    for t in TASKS:
        assert np.array_equal(from_dict.column(t).to_numpy(), want.column(t).to_numpy())


@pytest.mark.parametrize(
    "change, column, row",
    [
        (lambda t: t.drop_columns(["video_id"]), "video_id", None),
        (lambda t: t.set_column(t.schema.get_field_index("user_id"), "user_id",
                                pa.array([str(x) for x in t.column("user_id").to_pylist()])), "user_id", None),
        (lambda t: with_value(t, "log_duration", 5, float("nan")), "log_duration", 6),
        (lambda t: with_value(t, "video_id", 9, 10**9), "video_id", 10),
    ],
    ids=["missing column", "wrong dtype", "NaN dense", "id out of range"],
)
def test_bad_input_raises_input_error_naming_column_and_row(model, parquet_dir, change, column, row):
    table = pq.read_table(parquet_dir / "parts" / "part-0000.parquet")
    scorer = pepnet.Scorer(model)
    with pytest.raises(pepnet.InputError) as e:
        scorer.score(change(table))
    assert f"'{column}'" in str(e.value), str(e.value)
    assert e.value.row == row, str(e.value)
    if row is not None:
        assert e.value.column == column
    # The scorer is still usable after the error.
    assert scorer.score(table).num_rows == table.num_rows


def with_value(table, column, row, value):
    i = table.schema.get_field_index(column)
    values = table.column(column).to_pylist()
    values[row] = value
    return table.set_column(i, column, pa.array(values, table.schema.field(i).type))


def test_version_and_errors_are_exported():
    assert pepnet.__version__
    assert issubclass(pepnet.InputError, ValueError)
    with pytest.raises(pepnet.PepnetError):
        pepnet.Scorer("/nonexistent/model")
