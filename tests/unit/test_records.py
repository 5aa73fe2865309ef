"""The typed record: one schema for writer, reader and synthetic data; its published JSON Schema; migration; validate."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sparsebench import records
from sparsebench.leaderboard import synthetic

DOCS = Path(__file__).resolve().parents[2] / "docs" / "records.md"

# A schema-1 solution and explanation record, as sparsebench 0.1.0 wrote them.
V1_SOLUTION = {
    "schema_version": 1, "kind": "solution", "id": "0123456789abcdef0123",
    "task": {"name": "topk-uniform", "version": 1, "config": {"V": 1000, "k": 5, "w_lo": 1.0, "w_hi": 2.0}},
    "width": 64, "seed": 0, "eval": {"n_samples": 8192, "probe_samples": 2048, "seed": 10000019},
    "solver": {"type": "trained", "name": "mlp1", "config": {"d_model": 64, "d_mlp": 64}},
    "train": {"steps": 2000}, "checkpoint": {"key": "k", "sha256": "s"},
    "metrics": {"kl": 0.43, "topk_mass": 0.81, "weight_leak": 0.5}, "theory": {},
    "provenance": {"sparsebench_version": "0.1.0", "git_commit": None, "torch_version": "2.13.0", "python": "3.11.7",
                   "hostname": "h", "device": "cpu", "wall_seconds": 1.0, "date": "2026-11-22T03:00:00+00:00",
                   "plugins": {"sparsebench": "0.1.0"}},
}
V1_EXPLANATION = {
    **{k: v for k, v in V1_SOLUTION.items() if k not in ("solver", "metrics", "theory")},
    "kind": "explanation", "id": "0123456789abcdef0124",
    "model": {"name": "mlp1", "config": {"d_model": 64, "d_mlp": 64}},
    "mechanism": {"name": "bloom", "config": {}, "oracle": False}, "fit": {"r2": 0.97}, "null_fits": {},
    "nulls": {"untrained": "initial weights"},
    "probes": {"patch": {"status": "ok", "level": "causal", "reads": [], "main": "loss_recovered", "scores": {
        "loss_recovered": {"value": 1.0, "higher_is_better": True, "nulls": {"untrained": None, "resampled": -3.0}}}},
               "hidden-code": {"status": "not_applicable", "reason": "n/a"}},
}


def test_the_published_schema_is_the_code_schema():
    text = DOCS.read_text()
    block = re.search(r"```json\n(.*?)\n```", text, re.S)
    assert block, "docs/records.md has no ```json schema block"
    assert json.loads(block.group(1)) == records.json_schema(), \
        "docs/records.md is stale: regenerate its schema block with `sparsebench validate --schema`"


def test_synthetic_records_round_trip_through_the_schema(tmp_path):
    recs = synthetic.demo_records(evil=True)
    synthetic.write_records(tmp_path, recs)
    loaded = records.load([tmp_path])
    assert sorted(r.id for _, r in loaded) == sorted(r.id for r in recs)
    assert {r.id: r for _, r in loaded} == {r.id: r for r in recs}


def test_schema_1_records_are_migrated_on_read():
    sol = records.parse(V1_SOLUTION)
    assert sol.schema_version == 2 and sol.task.family == "topk"
    assert sol.task.directions == {"kl": "lower", "topk_mass": "higher", "weight_leak": "zero"}
    assert sol.model.width_fields == ["d_model", "d_mlp"]
    exp = records.parse(V1_EXPLANATION)
    score = exp.probes["patch"].scores["loss_recovered"]
    assert score.direction == "higher" and score.nulls == {"untrained": None} and score.own_nulls == {"resampled": -3.0}
    assert exp.probes["hidden-code"].status == "not_applicable"


@pytest.mark.parametrize("change,where", [
    ({"schema_version": 99}, "unknown schema_version 99"),
    ({"theory": [1]}, "theory"),
    ({"seed": [0, 1]}, "seed"),
    ({"metrics": {"width": 1.0}}, "reserved"),
    ({"metrics": {"kl": "low"}}, "metrics.kl"),
    ({"task": {**V1_SOLUTION["task"], "name": "x" * 5_000_000}}, "task.name"),
    ({"task": {**V1_SOLUTION["task"], "name": "evil\x1b[31m"}}, "task.name"),
    ({"colour": "red"}, "colour"),
    ({"kind": "mystery"}, "kind"),
])
def test_malformed_records_are_refused_naming_the_field(change, where):
    with pytest.raises(ValueError, match=re.escape(where)):
        records.parse({**V1_SOLUTION, **change})


def test_a_probe_block_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="nulls"):
        records.parse({**V1_EXPLANATION, "nulls": ["untrained"]})


def test_deeply_nested_json_is_refused_not_a_crash(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested too deeply|not a JSON object"):
        records.read(deep)


def test_validate_checks_a_folder_as_a_submission(tmp_path):
    synthetic.write_records(tmp_path / "ok", synthetic.solution_records(widths=(16,), seeds=(0,)))
    run = [sys.executable, "-m", "sparsebench", "validate"]
    good = subprocess.run([*run, str(tmp_path / "ok")], capture_output=True, text=True)
    assert good.returncode == 0 and good.stdout.startswith("3 valid record(s), 0 bad file(s)"), good.stderr
    (tmp_path / "ok" / "bad.json").write_text(json.dumps({**V1_SOLUTION, "seed": "zero"}))
    (tmp_path / "ok" / "trunc.json").write_text("{")
    bad = subprocess.run([*run, str(tmp_path / "ok")], capture_output=True, text=True)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 2 and any("bad.json: seed" in ln for ln in lines) and any("trunc.json" in ln for ln in lines)
    assert "Traceback" not in bad.stderr
