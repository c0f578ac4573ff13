"""attnlab-bench's real-data part (perf/real.py), run as the installed command in a fresh process on a
trained real-corpus checkpoint: every system decodes the run's test split, HF Marian on the exported
weights gives attnlab's hypotheses and BLEU, and the results file carries figures, checks and targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_export import ckpt, multi30k_slice, trained  # noqa: F401

pytest.importorskip("transformers", reason="the export extra: pip install 'attnlab[export]'")
pytest.importorskip("ctranslate2", reason="the export extra: pip install 'attnlab[export]'")

BIN = Path(sys.executable).parent
SYSTEMS = ["attnlab", "attnlab-int8", "marian", "ctranslate2", "ctranslate2-int8"]


def test_real_data_bench_decodes_the_test_set_in_every_system(ckpt, trained, tmp_path):  # noqa: F811
    out = tmp_path / "real.json"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(BIN / "attnlab-bench"), f"real.ckpt={ckpt}", "real.rounds=1", "real.warmup=0", "threads=1",
         "real.beam_size=3", f"real.systems=[{','.join(SYSTEMS)}]", f"output={out}", f"paths.log_dir={tmp_path}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "real data: test, 30 sentences" in done.stdout and "real-data targets" in done.stdout
    results = json.loads(out.read_text())["real"]
    assert results["sentences"] == 30 and results["search"]["beam_size"] == 3
    assert set(results["systems"]) == set(SYSTEMS)
    for by_strategy in results["systems"].values():
        assert set(by_strategy) == {"greedy", "beam"}
        for f in by_strategy.values():
            assert f["sentences_per_sec"] > 0 and f["tokens_per_sec"] > f["sentences_per_sec"]
            assert 0.0 <= f["bleu"] <= 100.0
    # the same model and search in HF: the same hypotheses, so the same BLEU
    marian = [c for c in results["checks"] if c["check"].startswith("marian")]
    assert len(marian) == 2 and all(c["ok"] and c["identical"] == 1.0 for c in marian), marian
    for strategy in ("greedy", "beam"):
        assert results["systems"]["marian"][strategy]["bleu"] == results["systems"]["attnlab"][strategy]["bleu"]
    targets = {(t["system"], t["peer"], t["strategy"]): t for t in results["targets"]}
    assert ("attnlab", "marian", "beam") in targets and ("attnlab-int8", "ctranslate2-int8", "greedy") in targets
    for t in targets.values():
        assert t["met"] == (t["paired"] >= t["target"]) and t["paired"] > 0


def test_real_data_bench_refuses_unknown_systems_and_unaligned_files(ckpt, tmp_path):  # noqa: F811
    (tmp_path / "a.de").write_text("ein Hund\nzwei Hunde\n")
    (tmp_path / "a.en").write_text("a dog\n")
    cases = {
        ("real.systems=[attnlab,fairseq]",): "real.systems=['attnlab', 'fairseq'] must include attnlab",
        (f"real.src_file={tmp_path / 'a.de'}", f"real.ref_file={tmp_path / 'a.en'}"): "has 2 lines but",
    }
    for overrides, message in cases.items():
        done = subprocess.run([str(BIN / "attnlab-bench"), f"real.ckpt={ckpt}", *overrides, "output=null"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode != 0 and message in done.stderr, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
