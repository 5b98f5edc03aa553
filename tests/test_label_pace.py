"""scripts/label_pace.py at a faster pace: a scripted labeller in Chromium opens the page a few
seconds after `train --oracle human` starts and answers every 0.3 s; the run waits for it and ends
with its whole budget stored and trained on, no answer refused."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "label_pace.py"
_spec = importlib.util.spec_from_file_location("label_pace", SCRIPT)
label_pace = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = label_pace
_spec.loader.exec_module(label_pace)


@pytest.mark.slow
def test_a_labeller_who_comes_late_gets_fresh_pairs_and_the_run_waits_for_the_budget(tmp_path):
    pytest.importorskip("playwright.sync_api")
    if not os.path.exists(label_pace.CHROMIUM):
        pytest.skip(f"no Chromium at {label_pace.CHROMIUM}")
    # 2,048 steps take a few seconds: without pacing the run would end long before the page opens.
    res = label_pace.run_check(steps=2048, labels=10, open_after=6.0, every=0.3, run_dir=tmp_path,
                               extra=["--pretrain-labels", "3", "--n-envs", "2", "--iteration-steps", "1024"],
                               deadline_s=120, log=lambda *a: None)
    assert res.returncode == 0
    assert res.stored == res.trained == 10, res.lines()
    assert res.refused == {} and res.answers >= 10, res.lines()
    assert res.first_ready_s is not None and res.first_on_page_s is not None
