"""Type stubs of the compiled module behind ``pepnet``."""

from typing import List, Optional

import pyarrow

__version__: str

class InputError(ValueError):
    """Input that does not fit the model; ``column`` and ``row`` (1-based) say where, when known."""

    column: Optional[str]
    row: Optional[int]

class PepnetError(RuntimeError):
    """Any other failure of the engine: the model, the GPU, the store."""

class Scorer:
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
    ) -> None: ...
    def score_batch(
        self,
        batch: pyarrow.RecordBatch,
        carry: Optional[List[str]] = None,
        source: str = "batch",
        first_row: int = 1,
    ) -> pyarrow.RecordBatch: ...
    @property
    def tasks(self) -> List[str]: ...
    @property
    def features(self) -> List[str]: ...
    @property
    def adapter(self) -> str: ...
    def stats_json(self) -> str: ...
