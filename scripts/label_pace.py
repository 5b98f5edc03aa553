"""Labelling at a person's pace, measured: a scripted labeller in a real browser (Playwright, Chromium)
against `rlhf-control train --oracle human`.

It starts Chromium, then launches the run (a labeller's browser is open before the run starts),
opens a probe page as soon as the run prints its URL (to time the first pair on the page), opens the
labeller's page ``--open-after`` seconds after the launch and answers the pair on screen every
``--every`` seconds with the keys, by the clips' true returns read from the run's store. At the end it
prints the labels stored (and in the run's last metrics row, i.e. trained on) against the budget,
the answers the server refused, the time from launch to the first pair ready and on the page, and
how long the run took.

    python scripts/label_pace.py                       # the issue's check: Pendulum-v1, 30,000 steps, 40 labels,
                                                       # page opened after 60 s, one answer every 3 s
    python scripts/label_pace.py --steps 4096 --labels 8 --open-after 5 --every 0.3   # quick

Needs Playwright and Chromium (`scripts/setup.sh --dev`). Extra flags after ``--`` go to ``train``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required"]
NAME_KEY = "rlhf-control.labeller"
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class PaceResult:
    budget: int
    stored: int = 0  # labels in the store at the end
    trained: int = 0  # labels in the run's last metrics row (its reward was trained on them)
    answers: int = 0  # answers the page sent and the server stored
    refused: dict[int, int] = field(default_factory=dict)  # HTTP status -> count of refused answers
    first_ready_s: float | None = None  # launch -> a pair rendered and free
    first_on_page_s: float | None = None  # launch -> a pair on the probe page
    run_s: float | None = None  # launch -> the run's exit
    returncode: int | None = None

    def lines(self) -> list[str]:
        fmt = lambda x: "-" if x is None else f"{x:.1f} s"  # noqa: E731
        refused = ", ".join(f"{n} x HTTP {s}" for s, n in sorted(self.refused.items())) or "none"
        return [f"labels stored: {self.stored} of {self.budget}; in the last metrics row (trained on): {self.trained}",
                f"answers sent by the page and stored: {self.answers}; refused: {refused}",
                f"launch -> first pair ready: {fmt(self.first_ready_s)}; on the page: {fmt(self.first_on_page_s)}",
                f"launch -> run finished: {fmt(self.run_s)} (exit code {self.returncode})"]


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _label_of(store_path: Path, qid: int) -> str:
    """The key a perfect labeller presses for query ``qid``: by the true returns of its clips."""
    from rlhf_control.store.store import PreferenceStore

    with PreferenceStore.open(store_path) as store:
        pair = store.load_query(qid).pair
    a, b = pair.first.true_return, pair.second.true_return
    return "1" if a > b else ("2" if b > a else "3")


def run_check(task: str = "Pendulum-v1", steps: int = 30_000, labels: int = 40, open_after: float = 60.0,
              every: float = 3.0, run_dir: Path | None = None, extra: list[str] | None = None,
              deadline_s: float = 1800.0, log=print) -> PaceResult:
    """Run the check (see the module docstring); returns what it measured."""
    from playwright.sync_api import sync_playwright

    run_dir = Path(run_dir or tempfile.mkdtemp(prefix="label-pace-")) / "run"
    cmd = [sys.executable, "-m", "rlhf_control.cli", "train", "--oracle", "human", "--task", task, "--steps",
           str(steps), "--labels", str(labels), "--label-port", "0", "--run-dir", str(run_dir), "--no-progress",
           *(extra or [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = PaceResult(budget=labels)
    with sync_playwright() as p:
        # The labeller's browser is running before the launch, as a person's would be: Chromium's own
        # start-up (seconds of both cores here) is not the framework's time to the first pair.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            t0 = time.monotonic()
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            try:
                out = _follow(proc)
                url = out.url(120)
                threading.Thread(target=_time_first_ready, args=(url, t0, result), daemon=True).start()
                _probe(browser, url, t0, result)
                _label(browser, url, run_dir / "preferences.sqlite", proc, t0 + open_after, every,
                       t0 + deadline_s, result, log)
                proc.wait(timeout=max(1.0, t0 + deadline_s - time.monotonic()))
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=30)
        finally:
            browser.close()
    result.returncode = proc.returncode
    result.run_s = time.monotonic() - t0
    import sqlite3

    with sqlite3.connect(run_dir / "preferences.sqlite") as con:
        result.stored = con.execute("SELECT COUNT(*) FROM answers WHERE skipped = 0").fetchone()[0]
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    result.trained = int(rows[-1]["labels"]) if rows else 0
    if proc.returncode != 0:
        log("".join(out.lines[-30:]))
    return result


class _Output:
    """The run's output, read by a thread; the labelling URL once it is printed."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.found = threading.Event()

    def url(self, timeout: float) -> str:
        if not self.found.wait(timeout):
            raise RuntimeError("train printed no URL:\n" + "".join(self.lines[-20:]))
        return re.search(r"(http://127\.0\.0\.1:\d+/)", "".join(self.lines)).group(1)


def _follow(proc: subprocess.Popen) -> _Output:
    out = _Output()

    def read() -> None:
        for line in proc.stdout:
            out.lines.append(line)
            if "http://" in line:
                out.found.set()

    threading.Thread(target=read, daemon=True).start()
    return out


def _time_first_ready(url: str, t0: float, result: PaceResult) -> None:
    """Poll the stats (in a thread, from the moment the URL is printed) for the first ready pair."""
    while time.monotonic() - t0 < 300:
        try:
            stats = _get_json(url + "api/stats")
        except OSError:
            stats = {}
        if stats.get("ready", 0) + stats.get("held_by_others", 0) > 0:
            result.first_ready_s = time.monotonic() - t0
            return
        time.sleep(0.05)


def _probe(browser, url: str, t0: float, result: PaceResult) -> None:
    """Time the first pair on a page of its own, opened as soon as the URL is printed; the page then
    closes (giving its pair back)."""
    ctx = browser.new_context(viewport={"width": 1000, "height": 700}, bypass_csp=True)
    ctx.add_init_script(f"localStorage.setItem({NAME_KEY!r}, 'probe')")
    page = ctx.new_page()
    page.goto(url)
    while result.first_on_page_s is None:
        if page.evaluate("window.labelApp && window.labelApp.current !== null"):
            result.first_on_page_s = time.monotonic() - t0
        if time.monotonic() - t0 > 300:
            break
        time.sleep(0.05)
    ctx.close()


def _label(browser, url: str, store_path: Path, proc: subprocess.Popen, start_at: float, every: float,
           deadline: float, result: PaceResult, log) -> None:
    """The labeller: from ``start_at``, one answer every ``every`` s, until the run ends."""
    time.sleep(max(0.0, start_at - time.monotonic()))
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    ctx.add_init_script(f"localStorage.setItem({NAME_KEY!r}, 'scripted')")
    page = ctx.new_page()

    def on_response(resp) -> None:
        if resp.url.endswith("/api/answer") and resp.request.method == "POST":
            if resp.status == 200:
                result.answers += 1
            else:
                result.refused[resp.status] = result.refused.get(resp.status, 0) + 1

    page.on("response", on_response)
    page.goto(url)
    next_at = time.monotonic()
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            qid = page.evaluate("window.labelApp.idle ? window.labelApp.current : null")
        except Exception:  # the page is reloading or the run just ended
            qid = None
        if qid is None or time.monotonic() < next_at:
            time.sleep(0.05)
            continue
        page.keyboard.press(_label_of(store_path, qid))
        next_at = time.monotonic() + every
        try:
            page.wait_for_function(f"window.labelApp.current !== {qid} && window.labelApp.idle", timeout=10_000)
        except Exception:
            pass
        log(f"  {time.monotonic() - (start_at - 0):6.1f} s after opening: answered pair #{qid}")
    ctx.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="Pendulum-v1")
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--labels", type=int, default=40)
    ap.add_argument("--open-after", type=float, default=60.0, help="seconds after launch the page is opened")
    ap.add_argument("--every", type=float, default=3.0, help="seconds between answers")
    ap.add_argument("--run-dir", type=Path, help="folder for the run (default: a temporary one)")
    ap.add_argument("--quiet", action="store_true", help="only the summary")
    ap.add_argument("extra", nargs="*", help="more train flags, after --")
    args = ap.parse_args(argv)
    res = run_check(args.task, args.steps, args.labels, args.open_after, args.every, args.run_dir, args.extra,
                    log=(lambda *a: None) if args.quiet else print)
    print(f"train --oracle human --task {args.task} --steps {args.steps} --labels {args.labels}; page opened "
          f"{args.open_after:g} s after launch; one answer every {args.every:g} s")
    for line in res.lines():
        print(line)
    return 0 if res.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
