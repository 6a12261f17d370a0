"""Smoke test of the end-to-end demo (examples/demo) on a tiny budget: it runs, reports every method and
writes its files; the library imports none of it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from examples.demo import cli
from examples.demo.data import add_label_noise
from examples.demo.methods import select_methods

pytestmark = pytest.mark.slow


def test_demo_runs_every_method_on_a_tiny_budget(tmp_path, capsys):
    out = cli.main(
        ["--epochs", "2", "--seeds", "2", "--train-subset", "300", "--no-progress", "--label-noise", "0.1",
         "--out", str(tmp_path)]
    )  # fmt: skip
    names = [row["method"] for row in out["rows"]]
    assert names[0] == "baseline" and len(names) == 8 and "Composer schedule" in names
    assert any(name.startswith("uniform at ") for name in names)
    base = out["rows"][0]
    assert base["backward"] == base["forward"] == 2 * 300
    for row in out["rows"][1:]:
        assert 0 < row["backward"] < base["backward"] or row["method"].startswith(("keep", "Composer"))
        assert row["loss"] > 0
        assert 0 <= row["acc_mean"] <= 100
    stale = next(r for r in out["rows"] if r["method"].startswith("Stale"))
    assert stale["forward"] - stale["backward"] < base["forward"]  # skipped scoring passes in stale epochs
    printed = capsys.readouterr().out
    assert "| method |" in printed and "baseline" in printed
    saved = json.loads((tmp_path / "digits-noise0.1.json").read_text())
    assert set(saved["curves"]) == set(names)
    assert (tmp_path / "digits-noise0.1.png").stat().st_size > 10_000


def test_label_noise_flips_the_requested_fraction():
    labels = torch.randint(0, 10, (10_000,), generator=torch.Generator().manual_seed(0))
    noisy = add_label_noise(labels, 0.2, 10)
    assert abs(float((noisy != labels).float().mean()) - 0.2) < 0.02


def test_demo_subset_methods_on_a_tiny_budget(tmp_path):
    out = cli.main(["--epochs", "6", "--seeds", "2", "--train-subset", "200", "--no-progress", "--methods", "subsets",
                    "--out", str(tmp_path)])  # fmt: skip
    rows = {row["method"].split(" at ")[0]: row for row in out["rows"]}
    # Budget 0.3 of 6 epochs = 1.8 full epochs; Grad-Match's warm-start epoch is paid from it: 1 + 3 x 0.3.
    budget = cli.DEFAULT_BUDGET * 6 * 200
    for name in ("Grad-Match", "Grad-Match unweighted"):
        assert abs(rows[name]["backward"] - budget) <= 0.5 * cli.DEFAULT_BUDGET * 200 + 10, rows[name]
    subset_rows = {"gradmatch", "Grad-Match", "Grad-Match unweighted", "Cached-Grad-Match", "RandomPB"}
    assert set(rows) == {"baseline", *subset_rows}
    # Cached-Grad-Match replays the recorded rounds: same backward examples, no scoring passes.
    assert rows["Cached-Grad-Match"]["backward"] == rows["Grad-Match"]["backward"]
    assert rows["Cached-Grad-Match"]["forward"] == rows["Cached-Grad-Match"]["backward"]
    assert rows["Grad-Match"]["forward"] > rows["Grad-Match"]["backward"]
    assert rows["RandomPB"]["backward"] < rows["baseline"]["backward"]
    assert (tmp_path / "digits-grad-match-rounds.pt").exists()


def test_methods_are_chosen_by_id():
    assert [m.id for m in select_methods("sb-2,cached-grad-match")] == [
        "baseline", "sb-2", "grad-match", "cached-grad-match"
    ]  # fmt: skip
    with pytest.raises(SystemExit, match="unknown method"):
        select_methods("SB beta=9")


def test_the_library_imports_no_demo_plotting_or_dataset_code():
    code = (
        "import sys, sbkernels\n"
        "loaded = [m for m in ('matplotlib', 'sklearn', 'examples') if m in sys.modules]\n"  # torch loads tqdm
        "assert not loaded, loaded"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
