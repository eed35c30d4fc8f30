"""Ray Data: score a dataset with one engine per actor.

    import ray, pepnet.ray
    ray.data.read_parquet("in/").map_batches(
        pepnet.ray.Score,
        fn_constructor_kwargs={"model_dir": "model"},
        batch_format="pyarrow",
        batch_size=4096,
        concurrency=2,      # actors: one per GPU
        num_gpus=1,         # on a machine without a GPU: num_gpus=0, num_cpus=0.5
    ).write_parquet("out/")

Each actor builds its engine once, in its constructor. Every actor's counters (rows scored,
and the embedding cache's hits, misses, unknown and unavailable ids) go to Ray's metrics
(``pepnet_rows_scored`` and ``pepnet_ids`` with a ``kind`` tag), so they are not lost on the
workers; ``Score.stats`` gives them in the actor.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import pyarrow as pa

from . import Scorer

__all__ = ["Score"]


class Score:
    """A callable class for ``Dataset.map_batches(..., batch_format="pyarrow")``: scores each
    batch; answers the carried columns (default: every column that is not a feature, so row
    keys survive) and one probability column per task.

    Args:
        model_dir: the model directory, readable by every worker.
        carry: the input columns to keep (default: all that are not features).
        **scorer: ``pepnet.Scorer``'s other arguments (precision, adapter, batch_size, ...).
    """

    def __init__(self, model_dir: str, carry: Optional[Sequence[str]] = None, **scorer: Any) -> None:
        self.scorer = Scorer(model_dir, **scorer)
        self.carry = list(carry) if carry is not None else None
        self._metrics = _metrics()
        self._reported: Dict[str, int] = {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = self.scorer.score(batch, carry=self.carry)
        self._report()
        return pa.Table.from_batches([out])

    def stats(self) -> Dict[str, Any]:
        """This actor's counters (``pepnet.Scorer.stats``)."""
        return self.scorer.stats()

    def _report(self) -> None:
        """Adds what changed since the last report to Ray's counters."""
        if self._metrics is None:
            return
        rows, ids = self._metrics
        stats = self.scorer.stats()
        now = {"rows": stats["rows"]}
        total = (stats.get("cache") or {}).get("total") or {}
        for kind in ("hits", "misses", "unknown", "unavailable"):
            now[kind] = int(total.get(kind, 0))
        for key, value in now.items():
            delta = value - self._reported.get(key, 0)
            if delta > 0:
                if key == "rows":
                    rows.inc(delta)
                else:
                    ids.inc(delta, tags={"kind": key})
        self._reported = now


def _metrics():
    try:
        from ray.util.metrics import Counter
    except ImportError:
        return None
    try:
        rows = Counter("pepnet_rows_scored", description="Rows scored by pepnet actors.")
        ids = Counter(
            "pepnet_ids",
            description="Hashed ids looked up by pepnet actors, by what the cache found.",
            tag_keys=("kind",),
        )
        return rows, ids
    except Exception:  # metrics need a Ray worker; a Score built outside one just scores
        return None
