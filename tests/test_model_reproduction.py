"""`inbox-bot train` on a checkout reproduces the shipped model (issue 3 acceptance).

The full training (5-fold thresholds plus the final fit, about 3 minutes here) runs in CI;
the time limit is part of the acceptance, so it is checked too."""
from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner

from inbox_bot import training
from inbox_bot.cli import main
from tests import mailgen


def test_training_from_the_repo_reproduces_the_shipped_models_held_out_metrics(tmp_path: Path):
    heldout = training.load_corpus(training.DEFAULT_HELDOUT_DIR)
    shipped = training.evaluate(None, heldout)
    started = time.monotonic()
    result = CliRunner().invoke(main, ["--log-level", "WARNING", "train", "--output", str(tmp_path / "m")])
    seconds = time.monotonic() - started
    assert result.exit_code == 0, result.output
    retrained = training.evaluate(tmp_path / "m", heldout)
    assert abs(retrained.macro_f1 - shipped.macro_f1) <= 0.01
    assert seconds < 600, f"training took {seconds:.0f} s"
    # The targets of the issue, on the held-out split that training never reads.
    assert retrained.macro_f1 >= 0.93 and retrained.exact_match >= 0.85
    assert retrained.per_language["ja"].macro_f1 >= 0.88


def test_classify_json_prints_one_object_per_file(tmp_path: Path):
    files = []
    for i, inq in enumerate((mailgen.english(1), mailgen.japanese(2))):
        f = tmp_path / f"m{i}.eml"
        f.write_bytes(inq.raw)
        files.append(str(f))
    result = CliRunner().invoke(main, ["--log-level", "ERROR", "classify", "--json", *files])
    assert result.exit_code == 0, result.output
    rows = [json.loads(l) for l in result.output.splitlines() if l.startswith("{")]
    assert [r["file"] for r in rows] == files
    for r in rows:
        assert {"labels", "scores", "language", "needs_review"} <= set(r)
    assert rows[0]["labels"] == ["deletion"] and rows[1]["language"] == "ja"
