"""Spark: score a DataFrame with ``mapInArrow``, one engine per Python worker.

    import pepnet.spark
    fn = pepnet.spark.score_partitions("model")
    schema = pepnet.spark.output_schema("model", df.schema)
    df.mapInArrow(fn, schema).write.parquet("out")

On executors with GPUs, give each task one (``spark.task.resource.gpu.amount``); on a machine
without one (``local[2]``) the engine runs on the CPU's Vulkan driver. The engine is built once
per Python worker (cached by its arguments), not per partition. The counters of every
partition (rows scored, cache hits and misses, unknown and unavailable ids) go to a Spark
accumulator when one is given (``stats=spark.sparkContext.accumulator(...)``, see
``stats_accumulator``), so they reach the driver.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

import pyarrow as pa

from . import Scorer

__all__ = ["score_partitions", "output_schema", "stats_accumulator"]

_SCORERS: Dict[Tuple, Scorer] = {}


def _scorer(model_dir: str, scorer: Dict[str, Any]) -> Scorer:
    key = (model_dir, tuple(sorted(scorer.items())))
    if key not in _SCORERS:
        _SCORERS[key] = Scorer(model_dir, **scorer)
    return _SCORERS[key]


def score_partitions(
    model_dir: str,
    carry: Optional[Sequence[str]] = None,
    stats: Any = None,
    **scorer: Any,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """A function for ``DataFrame.mapInArrow``: scores each record batch of a partition;
    yields the carried columns (default: every column that is not a feature) and one float
    probability column per task. ``stats``: an accumulator from ``stats_accumulator`` that
    collects every partition's counters. ``scorer``: ``pepnet.Scorer``'s other arguments."""
    carry = list(carry) if carry is not None else None

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        s = _scorer(model_dir, scorer)
        before = _counters(s.stats())
        for batch in batches:
            yield s.score(batch, carry=carry)
        if stats is not None:
            after = _counters(s.stats())
            stats.add({k: after[k] - before.get(k, 0) for k in after})

    return score


def output_schema(model_dir: str, input_schema: Any, carry: Optional[Sequence[str]] = None):
    """The Spark schema (``StructType``) ``score_partitions`` yields for input of
    ``input_schema`` (a Spark ``StructType``): the carried columns, then a float per task."""
    from pyspark.sql.types import FloatType, StructField, StructType

    import json

    with open(f"{model_dir}/model.json") as f:
        spec = json.load(f)
    features = {f["name"] for f in spec["features"]}
    names = [f.name for f in input_schema.fields if f.name not in features] if carry is None else list(carry)
    by_name = {f.name: f for f in input_schema.fields}
    fields = [StructField(n, by_name[n].dataType, True) for n in names]
    fields += [StructField(t, FloatType(), False) for t in spec["tasks"]]
    return StructType(fields)


def _counters(stats: Dict[str, Any]) -> Dict[str, int]:
    out = {"rows": int(stats["rows"])}
    total = (stats.get("cache") or {}).get("total") or {}
    for kind in ("hits", "misses", "unknown", "unavailable"):
        out[kind] = int(total.get(kind, 0))
    return out


def stats_accumulator(spark_context):
    """An accumulator of pepnet's counters (a dict of sums) for ``score_partitions(stats=...)``;
    read ``.value`` on the driver after the job."""
    from pyspark.accumulators import AccumulatorParam

    class _Sum(AccumulatorParam):
        def zero(self, value):
            return {}

        def addInPlace(self, a, b):
            for k, v in b.items():
                a[k] = a.get(k, 0) + v
            return a

    return spark_context.accumulator({}, _Sum())
