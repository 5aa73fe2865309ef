"""Fuzzing the two loaders that read what users and other machines write (issue 15, items 3, 7 and 9).

Seeded random generation (no extra dependency): mutated valid records (fields deleted, values swapped for
values of other types, sizes and depths, keys injected) must only ever be *refused* by `records.parse` /
`records.read` with a ValueError, never crash them; whatever the schema accepts must go through the boards and
every renderer; random settings (TOML documents, `--set` overrides) must only ever be a UserError (ConfigError
included) or a valid run. The number of cases is printed with -s; raise FUZZ_CASES to search longer.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import warnings

import pytest

from hostile import mutate
from sparsebench import records
from sparsebench.errors import UserError
from sparsebench.leaderboard import synthetic

CASES = int(os.environ.get("FUZZ_CASES", "3000"))
V1 = {
    "schema_version": 1, "kind": "solution", "id": "0123456789abcdef0123",
    "task": {"name": "topk-uniform", "version": 1, "config": {"V": 1000, "k": 5}},
    "width": 64, "seed": 0, "eval": {"n_samples": 8192, "probe_samples": 2048, "seed": 10000019},
    "solver": {"type": "trained", "name": "mlp1", "config": {"d_model": 64, "d_mlp": 64}},
    "train": {"steps": 2000}, "checkpoint": {"key": "k", "sha256": "s"}, "metrics": {"kl": 0.43}, "theory": {},
    "provenance": {"sparsebench_version": "0.1.0", "git_commit": None, "torch_version": "2.13.0", "python": "3.11",
                   "hostname": "h", "device": "cpu", "wall_seconds": 1.0, "date": "2026", "plugins": {}},
}


def base_records() -> list[dict]:
    sols = synthetic.solution_records(widths=(16,), seeds=(0,))
    exps = synthetic.explanation_records(seeds=(0,))
    return [records.to_json(r) for r in (*sols[:3], *exps[:2])] + [
        V1, {**V1, "kind": "explanation", "model": {"name": "mlp1", "config": {}}, "mechanism": {"name": "bloom"},
             "probes": {"p": {"status": "ok", "scores": {"s": {"value": 1.0, "nulls": {"untrained": 0.5}}}}}}]


def test_record_parser_only_ever_refuses_with_a_value_error():
    rng = random.Random(15)
    bases = base_records()
    accepted, refused = [], 0
    for i in range(CASES):
        data = mutate(rng.choice(bases), rng)
        try:
            rec = records.parse(data)
        except ValueError as e:
            refused += 1
            assert str(e) and "\n" not in str(e) and len(str(e)) < 400, str(e)[:500]
            continue
        except Exception as e:  # noqa: BLE001 - the assertion is that nothing else ever escapes
            pytest.fail(f"case {i}: {type(e).__name__}: {e} on {json.dumps(data, default=str)[:400]}")
        accepted.append(rec)
    print(f"records.parse: {CASES} mutations, {refused} refused, {len(accepted)} accepted")
    assert refused > CASES // 2 and accepted  # the generator exercises both sides

    # Whatever the schema accepts, the boards and every renderer take.
    from sparsebench.leaderboard import build, render

    pairs = [(f"{r.id}-{i}.json", r) for i, r in enumerate(accepted)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", records.RecordWarning)  # mutated ids repeat: "more than one record"
        b = build.boards_from(pairs)
    tables = render.board_tables(b)
    for text in (render.to_terminal(tables), render.to_markdown(tables), render.to_html(tables),
                 render.to_csv(b)):
        assert "\x1b" not in text


def test_record_files_only_ever_refuse_with_a_value_error(tmp_path):
    rng = random.Random(16)
    texts = [json.dumps(r) for r in base_records()]
    path = tmp_path / "r.json"
    for i in range(CASES // 3):
        raw = bytearray(rng.choice(texts).encode())
        for _ in range(rng.randint(1, 4)):
            op, pos = rng.random(), rng.randrange(len(raw))
            if op < 0.3:
                del raw[pos:]  # truncated
            elif op < 0.6:
                raw[pos] = rng.randrange(256)  # a flipped byte (maybe not UTF-8)
            elif op < 0.8:
                raw[pos:pos] = rng.choice([b"[" * 100_000, b"{\"a\":" * 5000, b"NaN", b"1e999", b"\x00", b"\"\\ud800\""])
            else:
                raw[pos:pos] = bytes(rng.randrange(256) for _ in range(8))
            if not raw:
                break
        path.write_bytes(bytes(raw))
        try:
            records.read(path)
        except ValueError:
            pass
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"case {i}: {type(e).__name__}: {e}")


def test_bad_files_are_skipped_with_one_warning_each_and_good_ones_make_the_board(tmp_path):
    rng = random.Random(17)
    good = synthetic.solution_records(widths=(16, 24, 32), seeds=(0, 1))
    synthetic.write_records(tmp_path, good)
    bad = 0
    for i in range(200):
        data = mutate(records.to_json(rng.choice(good)), rng)
        try:
            records.parse(data)
            continue  # still a record (e.g. a renamed metric): not a bad file
        except ValueError:
            pass
        bad += 1
        (tmp_path / "bad").mkdir(exist_ok=True)
        (tmp_path / "bad" / f"{i}.json").write_text(json.dumps(data, default=str))
    from sparsebench.leaderboard.build import build_boards

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b = build_boards([tmp_path])
    skipped = [str(w.message) for w in caught if issubclass(w.category, records.RecordWarning)]
    assert len(skipped) == bad and all(m.startswith(f"skipped result file {tmp_path / 'bad'}") for m in skipped)
    assert {r.id for _, r in b["records"]} >= {r.id for r in good}


# ----------------------------------------------------------------------------- settings

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, (int, datetime.date)):
        return str(v) if not isinstance(v, datetime.date) else v.isoformat()
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def _random_value(rng: random.Random, depth: int = 0):
    choices = [0, 1, -1, 2, 7, 64, 10**6, 10**12, 10**30, 2**63 - 1, -(2**63), 0.0, 1e-9, 1e30, -2.5, math.nan, math.inf,
               -math.inf, True, False, "", "fp32", "bf16", "learned", "fixed", "softmax", "os:system", "x" * 300,
               "\x1b[31m", datetime.date(2026, 1, 1)]
    if depth < 2 and rng.random() < 0.15:
        return [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 2 and rng.random() < 0.05:
        return {rng.choice(["V", "k", "a"]): _random_value(rng, depth + 1)}
    return rng.choice(choices)


FIELDS = {"task": ["name", "V", "k", "w_lo", "w_hi", "target", "beta", "tsak"],
          "model": ["name", "d_model", "d_mlp", "n_layers", "embed", "init_scale", "bias_in", "n_heads"],
          "train": ["steps", "batch_size", "lr", "warmup", "min_lr_frac", "weight_decay", "beta1", "beta2",
                    "precision", "stpes"]}


def _random_settings(rng: random.Random) -> dict:
    data: dict = {}
    for section in rng.sample([*FIELDS, "tsak", "seeds"], rng.randint(0, 3)):
        if section == "seeds":
            data["seeds"] = _random_value(rng)
        elif section == "tsak":
            data["tsak"] = {"V": 10}
        else:
            data[section] = {f: _random_value(rng) for f in rng.sample(FIELDS[section], rng.randint(1, 3))}
    return data


def test_settings_only_ever_fail_with_a_user_error(tmp_path):
    from sparsebench.settings import run_settings, run_spec, seed_list

    rng = random.Random(18)
    ok = errors = 0
    path = tmp_path / "run.toml"
    for i in range(CASES // 3):
        data = _random_settings(rng)
        text = "\n".join(f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict))
        text += "\n" + "\n".join(f"[{k}]\n" + "\n".join(f"{json.dumps(f)} = {_toml_value(x)}" for f, x in v.items())
                                 for k, v in data.items() if isinstance(v, dict))
        path.write_text(text)
        sets = [f"{rng.choice(['task', 'model', 'train', 'tsak', 'V'])}.{rng.choice(sum(FIELDS.values(), []))}="
                f"{_toml_value(_random_value(rng))}" for _ in range(rng.randint(0, 2))]
        try:
            merged = run_settings(path, sets)
            seed_list(merged.get("seeds", [0]))
            run_spec(merged)
            ok += 1
        except UserError as e:
            errors += 1
            assert "\n" not in str(e), str(e)
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"case {i}: {type(e).__name__}: {e}\n{text}\n{sets}")
    print(f"settings: {CASES // 3} random documents, {errors} refused, {ok} valid")
    assert errors and ok


def test_suites_only_ever_fail_with_a_user_error():
    from sparsebench.settings import apply_cli, suite_from_dict

    rng = random.Random(19)
    keys = ["name", "runs", "seeds", "widths", "mechanisms", "mechanism_config", "construct", "construct_widths",
            "probes", "nulls", "train", "eval_samples", "probe_samples", "tsak", "V"]
    errors = 0
    for i in range(CASES // 3):
        data = {k: _random_value(rng) for k in rng.sample(keys, rng.randint(0, 4))}
        if rng.random() < 0.3:
            data["runs"] = [{rng.choice(["task", "model", "task_config", "widths", "train", "tsak"]): _random_value(rng)}]
        sets = [f"{rng.choice(['task.V', 'model.d_mlp', 'train.lr', 'mechanism.bloom.alpha', 'V', 'tsak.V', 'seeds'])}"
                f"={_toml_value(_random_value(rng))}" for _ in range(rng.randint(0, 2))]
        try:
            suite = suite_from_dict(data)
            apply_cli(suite, task=None, model=None, mechanisms=None, probes=None, seeds=None, widths=None, sets=sets)
        except UserError as e:
            errors += 1
            assert "\n" not in str(e), str(e)
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"case {i}: {type(e).__name__}: {e}\n{data}\n{sets}")
    assert errors


def test_config_files_that_are_not_toml_are_one_error(tmp_path):
    from sparsebench.settings import load_toml

    rng = random.Random(20)
    base = b'[task]\nname = "topk-uniform"\nV = 50\n[train]\nlr = 1e-2\n'
    for i in range(CASES // 10):
        raw = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        (tmp_path / "c.toml").write_bytes(bytes(raw))
        try:
            load_toml(tmp_path / "c.toml")
        except UserError as e:
            assert str(e).startswith(f"config file {tmp_path / 'c.toml'} is not")


def test_files_that_are_not_records_are_skipped_without_hanging(tmp_path):
    good = synthetic.solution_records(widths=(16,), seeds=(0, 1))
    synthetic.write_records(tmp_path, good)
    os.mkfifo(tmp_path / "fifo.json")  # reading it would block forever
    (tmp_path / "zero.json").symlink_to("/dev/zero")  # reading it would never end
    (tmp_path / "huge.json").write_bytes(b" " * (records.MAX_BYTES + 1))
    rec = records.to_json(good[0])
    rec["id"] = "infinite0000000000000"
    text = json.dumps({**rec, "metrics": {**rec["metrics"], "kl": "REPLACE"}})
    (tmp_path / "inf.json").write_text(text.replace('"REPLACE"', "-Infinity"))  # kl is "lower is better"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = records.load([tmp_path])
    skipped = sorted(str(w.message).split(": ")[0].rsplit("/", 1)[1] for w in caught)
    assert skipped == ["fifo.json", "huge.json", "zero.json"]
    inf = next(r for _, r in loaded if r.id == "infinite0000000000000")
    assert inf.metrics["kl"] is None  # an infinite number is undefined, never the best


def test_config_files_that_never_end_are_one_error(tmp_path):
    from sparsebench.settings import load_toml

    with pytest.raises(UserError, match="^config file /dev/zero is larger than 10 MB: not a settings file$"):
        load_toml("/dev/zero")
