"""pepnet: PEPNet scoring on the GPU for Arrow data.

``Scorer`` owns an engine (a model on the GPU) and scores record batches: a
``pyarrow.RecordBatch`` or ``Table``, a pandas ``DataFrame``, or a dict of NumPy arrays, one
column per feature as ``pepnet score`` reads them. The answer is a ``pyarrow.RecordBatch``: the
input's columns that are not features (row keys survive a distributed job), then one float32
probability column per task. Arrow data crosses into the engine without a copy, and the GIL is
released while the GPU works.

Scaling out: ``pepnet.ray.Score`` (Ray Data's ``map_batches``), ``pepnet.spark.score_partitions``
(Spark's ``mapInArrow``), and ``pepnet score --shard I/N`` for job arrays.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Sequence

import pyarrow as pa

from ._native import InputError, PepnetError, __version__
from ._native import Scorer as _NativeScorer

__all__ = ["Scorer", "InputError", "PepnetError", "__version__", "to_record_batch"]


def to_record_batch(data: Any) -> pa.RecordBatch:
    """``data`` as one ``pyarrow.RecordBatch``: a RecordBatch as is, a Table's chunks joined, a
    pandas DataFrame (its index dropped), or a mapping of column name to array-like."""
    if isinstance(data, pa.RecordBatch):
        return data
    if isinstance(data, pa.Table):
        batches = data.combine_chunks().to_batches()
        if len(batches) == 1:
            return batches[0]
        if not batches:
            return pa.RecordBatch.from_pylist([], schema=data.schema)
        return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
    if hasattr(data, "to_arrow") and not isinstance(data, dict):
        return to_record_batch(data.to_arrow())
    try:
        import pandas as pd  # optional

        if isinstance(data, pd.DataFrame):
            return pa.RecordBatch.from_pandas(data, preserve_index=False)
    except ImportError:
        pass
    if isinstance(data, dict):
        return pa.RecordBatch.from_pydict({k: pa.array(v) for k, v in data.items()})
    raise TypeError(
        "expected a pyarrow RecordBatch or Table, a pandas DataFrame, or a dict of arrays; "
        f"got {type(data).__name__}"
    )


class Scorer:
    """A PEPNet model on the GPU.

    Args:
        model_dir: a model directory (``model.json`` and ``weights.safetensors``).
        precision: ``"f32"``, or ``"f16"`` (f16 weights and layer inputs, f32 sums).
        adapter: a substring of the GPU adapter's name (default: ``$PEPNET_ADAPTER``, else the
            high-performance one).
        batch_size: rows per GPU pass; larger inputs are scored in passes of this size.
        cache_rows: the embedding cache's rows for hashed features (default: every row).
        store: ``redis://HOST:PORT[,...]``: read hashed rows from a Redis Cluster.
        store_namespace: the namespace in the store.
        degraded: score the ids of a store node that is down with default rows.

    Scores do not depend on how rows are batched: they equal ``pepnet score``'s bit for bit.
    """

    def __init__(
        self,
        model_dir: str,
        precision: str = "f32",
        adapter: Optional[str] = None,
        batch_size: int = 4096,
        cache_rows: Optional[int] = None,
        store: Optional[str] = None,
        store_namespace: str = "default",
        degraded: bool = False,
    ) -> None:
        self._native = _NativeScorer(
            str(model_dir),
            precision=precision,
            adapter=adapter,
            batch_size=batch_size,
            cache_rows=cache_rows,
            store=store,
            store_namespace=store_namespace,
            degraded=degraded,
        )
        self._rows = 0

    @property
    def tasks(self) -> List[str]:
        """The task names: the output's probability columns, in order."""
        return list(self._native.tasks)

    @property
    def features(self) -> List[str]:
        """The feature names: the input columns the model reads."""
        return list(self._native.features)

    @property
    def adapter(self) -> str:
        """The GPU adapter the engine runs on."""
        return self._native.adapter

    def score(
        self,
        batch: Any,
        carry: Optional[Sequence[str]] = None,
        source: str = "batch",
    ) -> pa.RecordBatch:
        """Scores ``batch``; returns the carried columns (``carry``, default every column that
        is not a feature), then one float32 probability column per task.

        Raises:
            InputError: a missing column, a wrong type, a null, a NaN dense value or an id out
                of range; ``.column`` and ``.row`` say where (rows count from 1 over every
                batch this scorer was given, so they point into a stream of batches).
        """
        record = to_record_batch(batch)
        out = self._native.score_batch(
            record,
            carry=list(carry) if carry is not None else None,
            source=source,
            first_row=self._rows + 1,
        )
        self._rows += record.num_rows
        return out

    def output_schema(self, input_schema: pa.Schema, carry: Optional[Sequence[str]] = None) -> pa.Schema:
        """The schema ``score`` answers with for input of ``input_schema``."""
        names = [f for f in input_schema.names if f not in self.features] if carry is None else list(carry)
        fields = [input_schema.field(n).with_nullable(True) for n in names]
        fields += [pa.field(t, pa.float32(), nullable=False) for t in self.tasks]
        return pa.schema(fields)

    def stats(self) -> Dict[str, Any]:
        """Counters so far: rows and batches scored, and the embedding cache's statistics per
        hashed feature (hits, misses, unknown and unavailable ids), or None without one."""
        return json.loads(self._native.stats_json())
