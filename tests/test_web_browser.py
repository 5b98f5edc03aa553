"""The labelling page in a real browser (Playwright + Debian Chromium, headless), against a real server,
store and mp4 clips. One browser is shared by the module; each test has its own run directory."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from rlhf_control.rundir import STORE_FILE
from rlhf_control.store.store import PreferenceStore
from rlhf_control.types import SegmentPair
from rlhf_control.web.demo import BrightnessRenderer, add_queries, make_demo_run, make_segments
from rlhf_control.web.server import start_server

NAME_KEY = "rlhf-control.labeller"
WAIT_MS = 15_000  # generous for a loaded 2-core machine, but bounded

# Mean brightness of both clips on screen, or null until both have a decoded frame.
BRIGHTNESS_JS = """() => {
  const vs = window.labelApp.videos();
  if (vs.length < 2 || vs.some((v) => v.readyState < 2)) return null;
  const c = document.createElement("canvas");
  c.width = 32; c.height = 32;
  const g = c.getContext("2d", { willReadFrequently: true });
  return vs.map((v) => {
    g.drawImage(v, 0, 0, 32, 32);
    const d = g.getImageData(0, 0, 32, 32).data;
    let s = 0;
    for (let i = 0; i < d.length; i += 4) s += d[i] + d[i + 1] + d[i + 2];
    return s / (d.length / 4 * 3);
  });
}"""


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("web_browser") / "run"
    make_demo_run(run, n_segments=8, n_queries=40, seed=5, instructions="Pick the brighter clip.")
    return run


@pytest.fixture
def run_dir(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def server(run_dir):
    with start_server(run_dir, port=0) as srv:
        yield srv


@pytest.fixture
def store(run_dir):
    with PreferenceStore.open(run_dir / STORE_FILE) as s:
        yield s


def open_page(browser, url: str, name: str | None):
    """A fresh browser context (own cookies and localStorage) with the page loaded; -> (context, page, response)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    if name is not None:
        ctx.add_init_script(f"localStorage.setItem({NAME_KEY!r}, {name!r})")
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    return ctx, page, page.goto(url)


def wait_ready(page) -> int:
    """Wait until a pair is on screen and the page takes input; returns the query id shown."""
    page.wait_for_function("window.labelApp && window.labelApp.current !== null && window.labelApp.idle",
                           timeout=WAIT_MS)
    return page.evaluate("window.labelApp.current")


def act(page, action: str) -> int:
    """Press a key or click a selector on the pair shown, wait for the page to move on; returns that query id."""
    qid = wait_ready(page)
    if action.startswith("#"):
        page.click(action)
    else:
        page.keyboard.press(action)
    page.wait_for_function(f"window.labelApp.current !== {qid} && window.labelApp.idle", timeout=WAIT_MS)
    return qid


def answer_of(store: PreferenceStore, qid: int):
    found = [a for _, a in store.answers_since(0) if a.query_id == qid]
    return found[0] if found else None


def test_page_loads_and_both_videos_play_looping_in_step(browser, server):
    ctx, page, resp = open_page(browser, server.url, "ann")
    try:
        assert resp.status == 200
        wait_ready(page)
        page.wait_for_function("window.labelApp.upcoming !== null", timeout=WAIT_MS)  # next pair preloaded
        assert page.inner_text("#task-text") == "Pick the brighter clip."
        page.wait_for_function("document.getElementById('stat-pending').textContent === '40'", timeout=WAIT_MS)
        page.wait_for_function("window.labelApp.videos().every((v) => v.currentTime > 0.2 && !v.paused)",
                               timeout=WAIT_MS)
        # 1-second clips: when they end, both start again together
        loops = page.evaluate("window.labelApp.loops")
        page.wait_for_function(f"window.labelApp.loops >= {loops + 1}", timeout=WAIT_MS)
        page.wait_for_function("window.labelApp.videos().every((v) => v.currentTime > 0.1 && !v.paused)",
                               timeout=WAIT_MS)
        a, b = page.evaluate("window.labelApp.videos().map((v) => v.currentTime)")
        assert abs(a - b) < 0.3
        assert page.errors == []
    finally:
        ctx.close()


def test_each_key_and_button_stores_its_answer(browser, server, store):
    cases = [("ArrowLeft", 1), ("1", 1), ("ArrowRight", -1), ("2", -1), ("ArrowUp", 0), ("e", 0), ("E", 0),
             ("3", 0), ("ArrowDown", None), ("s", None), ("4", None), ("#btn-first", 1), ("#btn-second", -1),
             ("#btn-equal", 0), ("#btn-skip", None)]
    ctx, page, _ = open_page(browser, server.url, "ann")
    try:
        done = [(act(page, key), want) for key, want in cases]
        assert len({q for q, _ in done}) == len(cases)
        for qid, want in done:
            ans = answer_of(store, qid)
            assert ans is not None and ans.label == want and ans.labeller == "ann", (qid, want, ans)
            assert 0 < ans.seconds < 60
        assert page.inner_text("#stat-mine") == str(len(cases))
        assert page.errors == []
        # leaving the page gives its held pairs (on screen and preloaded) back to the pool
        page.wait_for_function("window.labelApp.upcoming !== null", timeout=WAIT_MS)
        held = page.evaluate("[window.labelApp.current, window.labelApp.upcoming]")
        assert all(store.get_query(q).assigned_to == "ann" for q in held)
        page.goto("about:blank")
        deadline = time.monotonic() + 10
        while any(store.get_query(q).assigned_to for q in held) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [store.get_query(q).assigned_to for q in held] == [None, None]
    finally:
        ctx.close()


def test_undo_with_u_backspace_and_button(browser, server, store):
    ctx, page, _ = open_page(browser, server.url, "ann")
    try:
        for undo_action in ("u", "Backspace", "#btn-undo"):
            qid = act(page, "ArrowLeft")
            assert answer_of(store, qid).label == 1
            shown_next = page.evaluate("window.labelApp.current")
            if undo_action.startswith("#"):
                page.click(undo_action)
            else:
                page.keyboard.press(undo_action)
            page.wait_for_function(f"window.labelApp.current === {qid} && window.labelApp.idle", timeout=WAIT_MS)
            assert answer_of(store, qid) is None
            assert store.get_query(qid).assigned_to == "ann"
            assert page.evaluate("window.labelApp.upcoming") == shown_next  # the skipped-over pair is next
            assert act(page, "ArrowRight") == qid  # answered again, the other way
            assert answer_of(store, qid).label == -1
        # an answer the reward model had already trained on: the undo says so
        server.app.set_run(trained_answer_id=10**9)
        qid = act(page, "ArrowLeft")
        page.keyboard.press("u")
        page.wait_for_function(f"window.labelApp.current === {qid} && window.labelApp.idle", timeout=WAIT_MS)
        assert "already trained on the old answer" in page.inner_text("#toast")
        assert answer_of(store, qid) is None
        assert store.count_answers() == 3
    finally:
        ctx.close()


def test_two_labellers_at_once_never_get_the_same_query(browser, server, store):
    (ca, pa, _), (cb, pb, _) = open_page(browser, server.url, "ann"), open_page(browser, server.url, "bob")
    seen: dict[str, set[int]] = {"ann": set(), "bob": set()}
    try:
        for i in range(8):
            keys = ("1", "ArrowRight", "e", "s")
            for name, page in (("ann", pa), ("bob", pb)):
                wait_ready(page)
                page.wait_for_function("window.labelApp.upcoming !== null", timeout=WAIT_MS)
                seen[name] |= set(page.evaluate("[window.labelApp.current, window.labelApp.upcoming]"))
            pa.keyboard.press(keys[i % 4])  # both answer at the same time
            pb.keyboard.press(keys[(i + 1) % 4])
            for page in (pa, pb):
                page.wait_for_function("window.labelApp.idle", timeout=WAIT_MS)
        assert not seen["ann"] & seen["bob"]
        by = {"ann": set(), "bob": set()}
        for _, a in store.answers_since(0):
            by[a.labeller].add(a.query_id)
        wait_ready(pa), wait_ready(pb)
        assert len(by["ann"]) == len(by["bob"]) == 8
        assert by["ann"] <= seen["ann"] and by["bob"] <= seen["bob"]
        assert store.count_answers() == 16
    finally:
        ca.close()
        cb.close()


def test_token_is_enforced_beyond_loopback(browser, run_dir, store):
    with start_server(run_dir, host="127.0.0.2", port=0, token="tok-123") as srv:
        ctx, page, resp = open_page(browser, srv.base_url, "ann")
        try:
            assert resp.status == 401
            assert page.goto(srv.base_url + "?token=wrong").status == 403
            assert page.goto(srv.url).status == 200
            assert "token" not in page.url  # dropped from the address bar; the cookie carries it
            wait_ready(page)  # the API works with the cookie ...
            page.wait_for_function("window.labelApp.videos().every((v) => v.currentTime > 0.1)",
                                   timeout=WAIT_MS)  # ... and so do the videos
            qid = act(page, "ArrowLeft")
            assert answer_of(store, qid).label == 1
        finally:
            ctx.close()
        ctx, page, _ = open_page(browser, srv.base_url, "eve")  # another browser, no token
        try:
            status = page.evaluate("fetch('/api/next?labeller=eve').then((r) => r.status)")
            assert status == 401 and store.count_answers() == 1
        finally:
            ctx.close()


def test_name_is_asked_once_and_new_pairs_appear_by_themselves(browser, server, store, run_dir):
    for q in store.pending_queries():
        store.retire(q.query_id)
    server.app.scan_every_s = 0.0
    ctx, page, _ = open_page(browser, server.url, None)
    try:
        page.wait_for_selector("#name-dialog[open]", timeout=WAIT_MS)
        page.fill("#name-input", "  zoe ")
        page.keyboard.press("Enter")
        page.wait_for_selector("#empty:not([hidden])", timeout=WAIT_MS)
        assert page.evaluate(f"localStorage.getItem({NAME_KEY!r})") == "zoe"
        segs = make_segments(2, np.random.default_rng(9), start_uid=50)
        q = store.add_query(SegmentPair(*segs), step=1)
        paths = [BrightnessRenderer().render_segment(s, run_dir / "clips") for s in segs]
        store.set_clips(q.query_id, paths[0], paths[1], None)
        page.wait_for_function(f"window.labelApp.current === {q.query_id}", timeout=WAIT_MS)
        assert page.is_hidden("#empty")
        act(page, "2")
        assert answer_of(store, q.query_id).labeller == "zoe"
        page.reload()
        page.wait_for_selector("#empty:not([hidden])", timeout=WAIT_MS)
        assert not page.is_visible("#name-dialog")
    finally:
        ctx.close()


def test_clips_from_the_real_renderer_play(browser, tmp_path):
    """HumanOracle + video.SegmentRenderer on states of a real Pendulum run: the clips are recorded
    relative to the run dir, served, and play in the page."""
    import gymnasium as gym

    from rlhf_control.oracles.human import HumanOracle
    from rlhf_control.recording.render_states import capture_state
    from rlhf_control.types import Segment
    from rlhf_control.video.render import SegmentRenderer

    env = gym.make("Pendulum-v1")
    env.reset(seed=0)
    env.action_space.seed(0)
    segs = []
    for k in range(2):
        states, obs, acts, rews = [], [], [], []
        for _ in range(12):
            states.append(capture_state(env))
            a = env.action_space.sample()
            o, r, *_ = env.step(a)
            obs.append(o), acts.append(a), rews.append(r)
        segs.append(Segment(np.array(obs), np.array(acts), np.array(rews), render_ref=states, uid=k))
    env.close()
    with PreferenceStore.create(tmp_path / STORE_FILE) as store:
        q = store.add_query(SegmentPair(*segs), step=0)
        oracle = HumanOracle(store, SegmentRenderer("Pendulum-v1", size=(128, 128)))
        oracle.submit([q])
        assert oracle.wait_rendered(timeout=60) and oracle.errors == []
        oracle.close()
        assert store.get_query(q.query_id).clip_first == f"clips/query_{q.query_id}_first.mp4"
        with start_server(tmp_path, port=0) as srv:
            ctx, page, _ = open_page(browser, srv.url, "ann")
            try:
                assert wait_ready(page) == q.query_id
                page.wait_for_function("window.labelApp.videos().every((v) => v.currentTime > 0.1 && !v.paused)",
                                       timeout=WAIT_MS)
                act(page, "ArrowRight")
                assert answer_of(store, q.query_id).label == -1
            finally:
                ctx.close()


def test_scripted_labeller_in_the_browser_trains_a_reward_that_ranks_like_the_true_return(browser, tmp_path):
    """A script that watches the clips (reads their brightness, which grows with the true return) and
    answers with the keys labels every query; a reward model trained on the stored labels ranks
    held-out segments like the true return."""
    from scipy.stats import spearmanr

    from rlhf_control.oracles.human import HumanOracle
    from rlhf_control.reward import EnsembleConfig, PreferenceDataset, RewardEnsemble, RewardTrainer
    from rlhf_control.reward.training import RewardTrainerConfig

    rng = np.random.default_rng(11)
    segments = make_segments(40, rng)
    train, held_out = segments[:24], segments[24:]
    with PreferenceStore.create(tmp_path / STORE_FILE) as store:
        oracle = HumanOracle(store, BrightnessRenderer())
        oracle.submit(add_queries(store, train, 40, rng))
        with start_server(tmp_path, port=0) as srv:
            ctx, page, _ = open_page(browser, srv.url, "script")
            try:
                keys = {1: ("ArrowLeft", "1", "#btn-first"), -1: ("ArrowRight", "2", "#btn-second"),
                        0: ("ArrowUp", "e", "#btn-equal")}
                for i in range(40):
                    wait_ready(page)
                    # The value the wait saw: a second evaluation could catch a video between frames.
                    left, right = page.wait_for_function(BRIGHTNESS_JS, timeout=WAIT_MS).json_value()
                    label = 0 if abs(left - right) < 1.0 else (1 if left > right else -1)
                    act(page, keys[label][i % 3])
                page.wait_for_selector("#empty:not([hidden])", timeout=WAIT_MS)
            finally:
                ctx.close()
        oracle.close()
        labels = store.labels()
        answers = [a for _, a in store.answers_since(0)]

    assert len(answers) == 40 and all(a.labeller == "script" and a.seconds > 0 for a in answers)
    agree = np.mean([np.sign(lb.pair.first.true_return - lb.pair.second.true_return) == lb.value for lb in labels])
    assert agree >= 0.9  # the script saw the clips the store asked about

    dataset = PreferenceDataset(max_size=None)
    dataset.extend(labels)
    ensemble = RewardEnsemble(EnsembleConfig(n_members=3, hidden=(32, 32)), obs_shape=(4,), act_shape=(2,), seed=0)
    trainer = RewardTrainer(ensemble, RewardTrainerConfig(lr=3e-3, noise=0.05, seed=0), rng=np.random.default_rng(0))
    trainer.train(dataset, epochs=60)
    predicted = ensemble.member_segment_returns(held_out).mean(axis=0)
    rho = spearmanr(predicted, [s.true_return for s in held_out]).statistic
    assert rho >= 0.8, rho

