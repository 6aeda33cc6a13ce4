import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas


def test_every_table_loads_with_version_metadata():
    for table in schemas.TABLES:
        schema = schemas.get_schema(table)
        assert schema.metadata[b"i2e.table"] == table.encode()
        assert schema.metadata[b"i2e.schema_version"] == str(schemas.CURRENT_VERSION).encode()
        assert len(schema) >= 5


def test_v2_carries_the_input_row_key_into_the_output_tables():
    for table in ("annotations", "images", "image_entities", "rejects"):
        assert {"source_shard", "row_in_shard"} <= set(schemas.column_names(table)), table
    assert "row_in_shard" not in schemas.column_names("images", version=1)


def test_files_written_under_v1_are_read_with_v1(tmp_path):
    row = {"sample_id": "s", "source_shard": "a", "row_in_shard": 1, "stage": "image", "kind": "rejected",
           "reason": "image_empty", "entity_id": None, "detail": "", "run_id": "r"}
    path = tmp_path / "old.parquet"
    schemas.write_table(schemas.from_records([row], "rejects", version=1), path, "rejects", version=1)
    assert schemas.read_table(path, "rejects").num_rows == 1


def test_nested_types_are_built_from_data():
    links = schemas.get_schema("annotations").field("links").type
    assert pa.types.is_list(links)
    struct = links.value_type
    assert struct.field("entity_id").type == pa.string()
    assert pa.types.is_list(struct.field("runner_ups").type)


def _reject(**overrides):
    row = {"sample_id": "s", "source_shard": "a", "row_in_shard": 1, "stage": "image", "kind": "rejected",
           "reason": "image_empty", "entity_id": None, "cluster_id": None, "survivor_shard": None, "survivor_row": None, "detail": "", "run_id": "r"}
    return {**row, **overrides}


def test_write_then_read_roundtrip(tmp_path):
    path = tmp_path / "rejects.parquet"
    schemas.write_table(schemas.from_records([_reject(), _reject(sample_id="t", row_in_shard=None)], "rejects"),
                        path, "rejects")
    table = schemas.read_table(path, "rejects")
    assert table.column("sample_id").to_pylist() == ["s", "t"]
    assert pq.read_schema(path).metadata[b"i2e.table"] == b"rejects"


def test_missing_and_extra_columns_are_refused():
    with pytest.raises(schemas.SchemaError, match="unexpected keys"):
        schemas.from_records([{**_reject(), "surprise": 1}], "rejects")
    table = schemas.from_records([_reject()], "rejects").drop(["detail"])
    with pytest.raises(schemas.SchemaError, match="missing columns"):
        schemas.validate(table, "rejects")


def test_null_in_required_column_is_refused():
    with pytest.raises(schemas.SchemaError, match="not nullable"):
        schemas.from_records([_reject(reason=None)], "rejects")


def test_wrong_type_is_refused_on_read(tmp_path):
    table = schemas.from_records([_reject()], "rejects")
    bad = table.set_column(table.schema.get_field_index("row_in_shard"), "row_in_shard",
                           pa.array(["1"], pa.string()))
    path = tmp_path / "bad.parquet"
    pq.write_table(bad.replace_schema_metadata(table.schema.metadata), path)
    with pytest.raises(schemas.SchemaError, match="row_in_shard"):
        schemas.read_table(path, "rejects")


def test_reading_a_file_as_the_wrong_table_is_refused(tmp_path):
    path = tmp_path / "r.parquet"
    schemas.write_table(schemas.from_records([_reject()], "rejects"), path, "rejects")
    with pytest.raises(schemas.SchemaError, match="holds table 'rejects'"):
        schemas.read_table(path, "images")


def test_describe_lists_columns_and_docs():
    text = schemas.describe("image_entities")
    assert "image_entity_score" in text and "float" in text and "rank" in text


def test_every_record_is_checked_not_only_the_first():
    rows = [_reject(), _reject(), {**_reject(), "surprise": 1}]
    with pytest.raises(schemas.SchemaError, match="record 2 has unexpected keys \\['surprise'\\]"):
        schemas.from_records(rows, "rejects")
    missing = _reject()
    del missing["detail"]
    with pytest.raises(schemas.SchemaError, match="record 1 .* lacks \\['detail'\\]"):
        schemas.from_records([_reject(), missing], "rejects")


def test_null_in_a_nested_required_field_is_refused():
    link = {"mention": "cat", "mention_label": "ALIAS", "mention_source": "alias", "mention_start": 0,
            "mention_end": 3, "entity_id": None, "link_score": 0.5, "link_prior": 0.5, "link_context": 0.0,
            "runner_ups": [], "image_entity_score": 0.3}
    row = {"sample_id": "s", "source": "parquet", "source_shard": "a", "row_in_shard": 0, "url": None,
           "sha256": "h", "phash": -5, "phash_center": 7, "width": 10, "height": 10, "image_format": "JPEG",
           "image": b"x", "alt_text_raw": "cat", "alt_text": "cat", "alt_texts_of_copies": [], "links": [link],
           "image_embedding": [0.6, 0.8]}
    with pytest.raises(schemas.SchemaError, match="links\\[\\].*'entity_id' is not nullable"):
        schemas.from_records([row], "annotations")
    assert schemas.from_records([{**row, "links": [{**link, "entity_id": "Q1"}]}], "annotations").num_rows == 1


def test_a_parquet_file_without_table_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.parquet"
    pq.write_table(schemas.from_records([_reject()], "rejects").replace_schema_metadata(None), path)
    with pytest.raises(schemas.SchemaError, match="not a 'rejects' table written by this project"):
        schemas.read_table(path, "rejects")
    assert schemas.read_table(path, "rejects", require_metadata=False).num_rows == 1
