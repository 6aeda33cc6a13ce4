import json

import pytest

import schemas
from pipelines.cli import main


def test_schema_prints_every_table(capsys):
    assert main(["schema"]) == 0
    text = capsys.readouterr().out
    for table in schemas.TABLES:
        assert f"{table} (schema v{schemas.CURRENT_VERSION})" in text


def test_print_config_reflects_flags(capsys):
    assert main(["build", "in.parquet", "--min-score", "0.3", "--top-k", "2", "--scorer", "open_clip",
                 "--pretrained", "model.pt", "--print-config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["inputs"] == ["in.parquet"]
    assert config["filter"]["min_score"] == 0.3 and config["filter"]["top_k_per_image"] == 2
    assert config["scorer"] == {**config["scorer"], "name": "open_clip", "pretrained": "model.pt"}


def test_build_help_explains(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["build", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--keep-top-fraction" in text and "resumes" in text and "--runner" in text


def test_unknown_options_are_refused_outside_build():
    with pytest.raises(SystemExit):
        main(["schema", "--runner=DataflowRunner"])


def test_report_summarizes_a_build(demo_build, capsys):
    out, manifest = demo_build
    assert main(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"input samples {manifest['input_samples']}" in text and "top entities" in text


def test_kb_build_writes_a_versioned_kb(tmp_path, capsys):
    out = tmp_path / "kb.parquet"
    assert main(["kb", "build", "--sources", "geonames", "--min-population", "5000000", "--out", str(out)]) == 0
    assert "kb_version" in capsys.readouterr().out
    table = schemas.read_table(out, "kb")
    assert table.num_rows > 100 and "geonames" in set(table.column("source").to_pylist())


def test_report_on_a_folder_without_a_build_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", str(tmp_path)])
    assert exit_.value.code == 2
    assert "manifest.json not found" in capsys.readouterr().err


def test_build_errors_are_one_line_not_a_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["build", str(tmp_path / "missing"), "--output", str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert "input does not exist" in capsys.readouterr().err


def test_runner_options(capsys):
    assert main(["build", "--batch-rows", "64", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["batch_rows"] == 64
    with pytest.raises(SystemExit) as exit_:
        main(["build", "--runner", "spark", "--direct_num_workers=2"])
    assert exit_.value.code == 2
    assert "--direct_num_workers=2" in capsys.readouterr().err
