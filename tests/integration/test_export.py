"""`sparsebench export`: every record as one tidy Parquet table that pandas and Hugging Face `datasets` load."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sparsebench.leaderboard import synthetic
from sparsebench.leaderboard.frames import SCORE_COLUMNS

DOC = Path(__file__).resolve().parents[2] / "docs" / "export.md"


def export(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparsebench", "export", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, list[dict], pd.DataFrame]:
    root = tmp_path_factory.mktemp("export")
    paths = synthetic.write_records(root / "results", synthetic.demo_records(evil=True))
    r = export("results", "--out", "table.parquet", cwd=root)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("wrote table.parquet: ") and r.stderr == ""
    return root, [json.loads(p.read_text()) for p in paths], pd.read_parquet(root / "table.parquet")


def test_one_row_per_number_of_every_record(exported):
    _, recs, df = exported
    expected = 0
    for rec in recs:
        if rec["kind"] == "solution":
            expected += sum(len(rec[b]) for b in ("metrics", "theory", "behaviour"))
        else:
            expected += sum(len(p["scores"]) if p["status"] == "ok" else 1 for p in rec["probes"].values())
    assert len(df) == expected
    assert set(df["id"]) == {rec["id"] for rec in recs}
    assert not df.duplicated(["id", "block", "probe", "score"]).any()


def test_scores_keep_their_interval_margin_and_rivals(exported):
    _, recs, df = exported
    checked = 0
    for rec in recs:
        if rec["kind"] != "explanation":
            continue
        for probe, pr in rec["probes"].items():
            for name, sc in pr["scores"].items():
                (row,) = df[(df.id == rec["id"]) & (df.probe == probe) & (df.score == name)].to_dict("records")
                assert row["value"] == sc["value"] and [row["value_lo"], row["value_hi"]] == sc["ci"]
                assert row["margin"] == sc["margin"] and [row["margin_lo"], row["margin_hi"]] == sc["margin_ci"]
                assert row["rival"] == sc["rival"] and row["direction"] == sc["direction"]
                assert row["is_main"] == (name == pr["main"]) and row["ranked"] == pr["ranked"]
                for n, v in sc["controls"].items():
                    assert row[f"control_{n}"] == v
                for n, v in sc["nulls"].items():
                    assert row[f"null_{n}"] == v
                assert (row["mechanism"], row["subject"], row["truth"] or None) == \
                    (rec["mechanism"]["name"], rec["subject"], rec["truth"])
                assert (row["width"], row["seed"], row["model.d_model"], row["task.V"]) == \
                    (rec["width"], rec["seed"], rec["model"]["config"]["d_model"], rec["task"]["config"]["V"])
                checked += 1
    assert checked > 30


def test_solution_rows_and_config_columns(exported):
    _, recs, df = exported
    bloom = df[(df.kind == "solution") & (df.truth == "bloom") & (df.task == "topk-uniform") & (df.width == 32)
               & (df.seed == 0)]
    rec = next(r for r in recs if r["kind"] == "solution" and r["solver"]["name"] == "bloom" and r["width"] == 32
               and r["seed"] == 0 and r["task"]["name"] == "topk-uniform")
    assert dict(zip(bloom[bloom.block == "metrics"].score, bloom[bloom.block == "metrics"].value)) == rec["metrics"]
    assert dict(zip(bloom[bloom.block == "theory"].score, bloom[bloom.block == "theory"].value)) == rec["theory"]
    assert set(bloom[bloom.block == "metrics"].direction) <= {"higher", "lower", "zero"}
    assert (bloom["mechanism.alpha"] == rec["solver"]["config"]["alpha"]).all() and (bloom.model == "").all()
    trained = df[(df.kind == "solution") & (df.model == "mlp1")]
    assert str(df["train.steps"].dtype) == "Int64" and (trained["train.steps"] == 2000).all()
    assert df.loc[df.subject == "construction", "train.steps"].isna().all()  # constructions are not trained
    assert list(df.columns[:len(SCORE_COLUMNS)]) == list(SCORE_COLUMNS)


def test_a_probe_that_does_not_apply_is_one_row_without_a_number(exported):
    _, _, df = exported
    na = df[df.status == "not_applicable"]
    assert len(na) > 0 and na["value"].isna().all() and (na.reason != "").all() and (na.direction == "").all()


def test_loads_as_a_hugging_face_dataset_offline(exported, tmp_path):
    pytest.importorskip("datasets", reason="Hugging Face datasets is not installed (pip install -e '.[test]')")
    root, _, df = exported
    code = ("import sys, datasets; ds = datasets.Dataset.from_parquet(sys.argv[1], cache_dir=sys.argv[2]); "
            "print(ds.num_rows, ','.join(ds.column_names))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-c", code, str(root / "table.parquet"), str(tmp_path / "cache")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    rows, columns = r.stdout.split()
    assert int(rows) == len(df) and columns.split(",") == list(df.columns)


def test_every_fixed_column_is_documented():
    documented = re.findall(r"^\| `([a-z_]+)` \|", DOC.read_text(), flags=re.M)
    assert documented == list(SCORE_COLUMNS)


@pytest.mark.parametrize("args,message", [
    (["missing", "--out", "t.parquet"], "error: results path not found: missing"),
    (["empty", "--out", "t.parquet"], "error: no records under empty"),
    (["empty", "--out", "empty"], "error: --out empty is a folder; give a file name"),
    (["results", "--out", "t.parquet/table.parquet"], "error: cannot write --out t.parquet/table.parquet"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, exported, tmp_path):
    root, _, _ = exported
    (tmp_path / "empty").mkdir()
    (tmp_path / "results").symlink_to(root / "results")
    (tmp_path / "t.parquet").write_text("an older table")
    r = export(*args, cwd=tmp_path)
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), r.stderr
    assert (tmp_path / "t.parquet").read_text() == "an older table"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "results", "t.parquet"]
