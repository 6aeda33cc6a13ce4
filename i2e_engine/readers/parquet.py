"""img2dataset-style parquet: image bytes, alt-text and url per row.

Image bytes are most of a file's weight, so rows are read one row group at a time, in
small record batches of only the needed columns, never the whole file; a row group that
turns out corrupt ends the shard after the rows of the groups before it. Parquet reads a
row group's column chunk as a unit, so a reader's memory grows with the input's row-group
size (not the file's): write inputs with row groups of a few hundred rows (img2dataset-style
files of 10k images in one row group need about 2x their size in memory).
Images come in ``jpg`` or ``image`` columns, as binary or as a struct with a ``bytes``
field (how Hugging Face datasets store an Image feature); text as string or binary.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from i2e_engine import storage
from i2e_engine.readers.base import ReaderOptions, ShardRef, failure_pairs, make_pair
from i2e_engine.records import Pair

SUFFIXES = (".parquet",)
IMAGE_COLUMNS = ("jpg", "image")
TEXT_COLUMNS = ("caption", "txt", "alt_text", "text")
BATCH_ROWS = 256
READ_BUFFER_BYTES = 1 << 20


def find_parquet_files(folder: str) -> list[str]:
    """Parquet files under ``folder`` (any URI), sorted; names starting with "." or "_" are
    skipped, as Spark and Hive writers keep their markers and temporary files there."""
    return storage.find(folder, SUFFIXES, skip_prefixes=(".", "_"))


def _is_binary(dtype: pa.DataType) -> bool:
    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or pa.types.is_binary_view(dtype)


def _is_image_type(dtype: pa.DataType) -> bool:
    if pa.types.is_struct(dtype):
        index = dtype.get_field_index("bytes")
        return index >= 0 and _is_binary(dtype.field(index).type)
    return _is_binary(dtype)


def _is_text_type(dtype: pa.DataType) -> bool:
    return (_is_binary(dtype) or pa.types.is_string(dtype) or pa.types.is_large_string(dtype)
            or pa.types.is_string_view(dtype))


def _pick_column(schema: pa.Schema, wanted: Optional[str], defaults: tuple[str, ...],
                 type_ok: Callable[[pa.DataType], bool]) -> tuple[Optional[str], Optional[str]]:
    """(column to read, error to report): the configured name, or the first default present."""
    candidates = (wanted,) if wanted else defaults
    present = [name for name in candidates if name in schema.names]
    if not present:
        return None, "missing_column:" + "|".join(candidates)
    name = present[0]
    dtype = schema.field(name).type
    if not type_ok(dtype):
        return None, f"unsupported_column_type:{name}:{dtype}"
    return name, None


def _image_bytes(value: object) -> Optional[bytes]:
    return value.get("bytes") if isinstance(value, dict) else value


def declared_rows(path: str) -> Optional[int]:
    """The rows a parquet file says it holds (its footer), None when the footer is unreadable."""
    try:
        return storage.parquet_file(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - any failure means the file cannot say
        return None


def _group_rows(parquet_file: pq.ParquetFile, group: int, names: tuple[Optional[str], ...], what: str
                ) -> Iterator[tuple]:
    """The values of ``names`` (None: a column the file lacks) for each row of one row group,
    streamed in small batches. A transient read error restarts the group after a backoff and
    skips the rows already delivered, so a storage hiccup neither loses nor repeats a row."""
    delivered = 0
    for attempt in range(storage.RETRY_ATTEMPTS):
        try:
            seen = 0
            for batch in parquet_file.iter_batches(batch_size=BATCH_ROWS, row_groups=[group],
                                                   columns=[n for n in names if n]):
                columns = [batch.column(n).to_pylist() if n else [None] * batch.num_rows for n in names]
                for values in zip(*columns):
                    seen += 1
                    if seen > delivered:
                        delivered += 1
                        yield values
            return
        except Exception as error:  # noqa: BLE001 - transient ones are retried, others end the shard
            storage.back_off(error, attempt, f"reading {what} row group {group}")


def read_parquet_shard(shard: ShardRef, options: ReaderOptions = ReaderOptions()) -> Iterator[Pair]:
    """Pairs of one parquet file, in row order. A missing image or text column marks every
    row with ``missing_column:<name>``; a file that fails partway ends with one
    ``unreadable_shard`` Pair for every row its footer declares and was not delivered."""
    row = 0
    total = None
    try:
        # Buffered page reads instead of pre-buffering whole column chunks: a row group of
        # image bytes is read a page at a time, which halves the peak for large row groups.
        # (Opening a remote file is retried by storage.)
        parquet_file = storage.parquet_file(shard.path, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
        total = parquet_file.metadata.num_rows
        schema = parquet_file.schema_arrow
        image_column, image_error = _pick_column(schema, options.image_column, IMAGE_COLUMNS, _is_image_type)
        text_column, text_error = _pick_column(schema, options.text_column, TEXT_COLUMNS, _is_text_type)
        url_column = options.url_column if options.url_column in schema.names else None
        read_error = "; ".join(e for e in (image_error, text_error) if e) or None
        columns = [c for c in (image_column, text_column, url_column) if c]
        if not columns:
            for _ in range(parquet_file.metadata.num_rows):
                yield make_pair(shard, row, None, None, read_error=read_error)
                row += 1
            return
        for group in range(parquet_file.num_row_groups):
            for image, text, url in _group_rows(parquet_file, group, (image_column, text_column, url_column),
                                                shard.path):
                yield make_pair(shard, row, _image_bytes(image), text, url if isinstance(url, str) else None,
                                read_error)
                row += 1
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError and others on bad files
        yield from failure_pairs(shard, row, total, error)
