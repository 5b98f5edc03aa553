"""No answer lost by the page: one the server could not take (it was gone) is kept in the page and
sent when the server is back; a closed tab gives its held pairs back at once; a hidden page gives
them back and takes them again when shown; the page shows the run's state and the progress."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from rlhf_control.rundir import STORE_FILE
from rlhf_control.store.store import PreferenceStore
from rlhf_control.web.app import run_identity
from rlhf_control.web.demo import make_demo_run
from rlhf_control.web.server import start_server

WAIT_MS = 15_000


@pytest.fixture
def run_dir(tmp_path_factory, tmp_path) -> Path:
    run = tmp_path / "run"
    make_demo_run(run, n_segments=8, n_queries=6, seed=7)
    return run


def open_page(browser, url: str, name: str, blocked: tuple[str, ...] = ()):
    """A fresh context with ``name`` as labeller, requests matching ``blocked`` failing, and the page
    loaded with a pair on screen: -> (ctx, page)."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    ctx.add_init_script(f"localStorage.setItem('rlhf-control.labeller', {name!r})")
    for pattern in blocked:
        ctx.route(pattern, lambda route: route.abort())
    page = ctx.new_page()
    page.goto(url)
    page.wait_for_function("window.labelApp && window.labelApp.current !== null && window.labelApp.idle",
                           timeout=WAIT_MS)
    return ctx, page


def page_left_by_its_server(browser, run_dir: Path, tmp_path: Path):
    """ann's page on ``run_dir``'s server, that server stopped, and another demo run (its pairs
    numbered from 1 as well) ready to be served on the same port: -> (ctx, page, other, port)."""
    srv = start_server(run_dir, port=0)
    ctx, page = open_page(browser, srv.url, "ann")
    srv.stop()
    other = tmp_path / "other"
    make_demo_run(other, n_segments=8, n_queries=6, seed=8)
    return ctx, page, other, srv.port


def store_steps(run: Path, query_id: int) -> tuple[int, int]:
    """The agent steps of a query's two clips, as the store has them."""
    with PreferenceStore.open(run / STORE_FILE) as store:
        rec = store.get_query(query_id)
        steps = store.agent_steps([rec.first_id, rec.second_id])
    return steps[rec.first_id], steps[rec.second_id]


def held(store: PreferenceStore) -> dict[int, str]:
    return {qid: holder for qid, _, _, holder in store.pending_overview() if holder is not None}


def test_an_answer_the_server_could_not_take_is_kept_and_sent_when_it_is_back(browser, run_dir):
    srv = start_server(run_dir, port=0)
    port = srv.port
    ctx, page = open_page(browser, srv.url, "ann")
    try:
        qid = page.evaluate("window.labelApp.current")
        srv.stop()  # the run ended (or the server went away) while ann watched the pair
        page.keyboard.press("1")
        page.wait_for_function("window.labelApp.outbox.length === 1", timeout=WAIT_MS)
        assert page.evaluate("window.labelApp.outbox") == [qid]
        page.wait_for_selector("#banner.offline", timeout=WAIT_MS)
        with PreferenceStore.open(run_dir / STORE_FILE) as store:
            assert store.count_answers() == 0
        # `rlhf-control label` (or the resumed run) serves the run again on the same port
        with start_server(run_dir, port=port):
            page.wait_for_function("window.labelApp.outbox.length === 0 && window.labelApp.online", timeout=WAIT_MS)
            with PreferenceStore.open(run_dir / STORE_FILE) as store:
                answers = [a for _, a in store.answers_since(0)]
            assert [(a.query_id, a.label, a.labeller) for a in answers] == [(qid, 1, "ann")]
            # stored in localStorage: a reload finds nothing left to send
            page.reload()
            page.wait_for_function("window.labelApp && window.labelApp.online", timeout=WAIT_MS)
            assert page.evaluate("window.labelApp.outbox") == []
    finally:
        ctx.close()


def test_an_answer_kept_before_the_page_heard_of_its_run_is_still_sent_to_that_run(browser, run_dir):
    # The server went away before the page's first stats arrived: the page knows the run only from
    # the pair it shows, and the kept answer must still reach that run when it is served again.
    srv = start_server(run_dir, port=0)
    port = srv.port
    ctx, page = open_page(browser, srv.url, "ann", blocked=("**/api/stats*",))
    try:
        assert page.evaluate("window.labelApp.runId") is None
        qid = page.evaluate("window.labelApp.current")
        srv.stop()
        page.keyboard.press("2")
        page.wait_for_function("window.labelApp.outbox.length === 1", timeout=WAIT_MS)
        ctx.unroute("**/api/stats*")
        with start_server(run_dir, port=port):
            page.wait_for_function("window.labelApp.outbox.length === 0 && window.labelApp.online", timeout=WAIT_MS)
            with PreferenceStore.open(run_dir / STORE_FILE) as store:
                answers = [a for _, a in store.answers_since(0)]
            assert [(a.query_id, a.label, a.labeller) for a in answers] == [(qid, -1, "ann")]
    finally:
        ctx.close()


def test_a_pair_shown_from_one_run_is_not_answered_into_the_run_served_after_it(browser, run_dir, tmp_path):
    # The page shows run A's pair; A's server stops and another run takes the port. The page hears
    # of the new run from its stats, but the pair on screen is still A's: its answer must not land on
    # the new run's pair of the same number.
    ctx, page, other, port = page_left_by_its_server(browser, run_dir, tmp_path)
    ctx.route("**/api/heartbeat", lambda route: route.abort())  # else it moves the page on (next test)
    try:
        qid = page.evaluate("window.labelApp.current")
        assert page.evaluate("window.labelApp.currentRun") == run_identity(run_dir)
        with start_server(other, port=port):
            page.wait_for_function(f"window.labelApp.runId === {run_identity(other)!r}", timeout=WAIT_MS)
            assert page.evaluate("window.labelApp.current") == qid
            page.keyboard.press("1")
            page.wait_for_function("document.querySelector('#toast').textContent.includes('not stored')",
                                   timeout=WAIT_MS)
            with PreferenceStore.open(other / STORE_FILE) as store:
                assert store.count_answers() == 0
    finally:
        ctx.close()


def test_a_page_showing_a_pair_of_the_run_served_before_moves_on_to_the_new_runs_pairs(browser, run_dir, tmp_path):
    ctx, page, other, port = page_left_by_its_server(browser, run_dir, tmp_path)
    try:
        new_run = run_identity(other)
        with start_server(other, port=port), PreferenceStore.open(other / STORE_FILE) as store:
            # the heartbeat finds the new server holds none of the old run's pairs for ann
            page.wait_for_function(f"window.labelApp.currentRun === {new_run!r} && window.labelApp.idle",
                                   timeout=WAIT_MS)
            shown = {page.evaluate("window.labelApp.current"), page.evaluate("window.labelApp.upcoming")} - {None}
            assert set(held(store)) == shown and set(held(store).values()) == {"ann"}
            assert all(new_run in v for v in page.evaluate(
                "window.labelApp.videos().map((v) => v.getAttribute('src') || v.src)"))
            qid = page.evaluate("window.labelApp.current")
            page.keyboard.press("2")
            page.wait_for_function("window.labelApp.mine >= 1 && window.labelApp.idle", timeout=WAIT_MS)
            assert [(a.query_id, a.label) for _, a in store.answers_since(0)] == [(qid, -1)]
    finally:
        ctx.close()


def test_a_kept_answer_is_never_stored_in_another_run_nor_undone_before_it_is_sent(browser, run_dir, tmp_path):
    ctx, page, other, port = page_left_by_its_server(browser, run_dir, tmp_path)
    try:
        page.keyboard.press("1")
        page.wait_for_function("window.labelApp.outbox.length === 1", timeout=WAIT_MS)
        page.keyboard.press("u")  # the server would take back ann's previous answer, not this one
        page.wait_for_function("document.querySelector('#toast').textContent.includes('not sent yet')",
                               timeout=WAIT_MS)
        assert page.evaluate("window.labelApp.outbox.length") == 1
        # Another run, whose queries are numbered from 1 as well, is served on the same port.
        with start_server(other, port=port):
            page.wait_for_function("window.labelApp.outbox.length === 0 && window.labelApp.online", timeout=WAIT_MS)
            page.wait_for_function("document.querySelector('#toast').textContent.includes('another run')",
                                   timeout=WAIT_MS)
            for run in (other, run_dir):
                with PreferenceStore.open(run / STORE_FILE) as store:
                    assert store.count_answers() == 0
            # a fresh page has answered nothing: undo takes back nothing of an earlier visit's
            page.reload()
            page.wait_for_function("window.labelApp && window.labelApp.current !== null && window.labelApp.idle",
                                   timeout=WAIT_MS)
            page.keyboard.press("2")
            page.wait_for_function("window.labelApp.mine === 1 && window.labelApp.idle", timeout=WAIT_MS)
            page.reload()
            page.wait_for_function("window.labelApp && window.labelApp.current !== null && window.labelApp.idle",
                                   timeout=WAIT_MS)
            page.keyboard.press("u")
            page.wait_for_function("document.querySelector('#toast').textContent.includes('Nothing answered')",
                                   timeout=WAIT_MS)
            with PreferenceStore.open(other / STORE_FILE) as store:
                assert store.count_answers() == 1
    finally:
        ctx.close()


def test_closing_or_hiding_the_tab_gives_its_pairs_back(browser, run_dir):
    with start_server(run_dir, port=0) as srv, PreferenceStore.open(run_dir / STORE_FILE) as store:
        ctx, page = open_page(browser, srv.url, "bob")
        shown = page.evaluate("window.labelApp.current")
        page.wait_for_function("window.labelApp.upcoming !== null", timeout=WAIT_MS)
        assert set(held(store)) == {shown, page.evaluate("window.labelApp.upcoming")}
        # hidden: both go back at once; shown again: the heartbeat takes the one on screen back
        page.evaluate("""() => {
            Object.defineProperty(document, 'hidden', { configurable: true, get: () => true });
            document.dispatchEvent(new Event('visibilitychange'));
        }""")
        t0 = time.time()
        while held(store) and time.time() - t0 < 10:
            time.sleep(0.1)
        assert held(store) == {}
        page.evaluate("""() => {
            delete document.hidden;  // the browser's own (visible) again
            document.dispatchEvent(new Event('visibilitychange'));
        }""")
        t0 = time.time()
        while held(store).get(shown) != "bob" and time.time() - t0 < 10:
            time.sleep(0.1)
        assert held(store).get(shown) == "bob" and page.evaluate("window.labelApp.current") == shown
        page.close(run_before_unload=True)
        t0 = time.time()
        while held(store) and time.time() - t0 < 10:
            time.sleep(0.1)
        assert held(store) == {}  # not after the 30-s lease: at once
        ctx.close()


def test_the_page_shows_progress_and_that_the_agent_waits(browser, run_dir):
    with start_server(run_dir, port=0) as srv:
        srv.app.set_run(state="waiting", step=2048, wanted=5, budget=40)
        ctx, page = open_page(browser, srv.url, "cat")
        try:
            page.wait_for_selector("#banner.waiting", timeout=WAIT_MS)
            assert "waiting for your labels" in page.inner_text("#banner")
            page.keyboard.press("2")
            page.wait_for_function("document.getElementById('stat-labels').textContent === '1 of 40'",
                                   timeout=WAIT_MS)
            assert "ready" in page.inner_text("#pending-split")
            # a poll that finds nothing new writes nothing: the banner, a live region, is not read out
            # again every 2 s, and the counts keep their text nodes
            page.evaluate("""() => { window.writes = 0;
                const seen = new MutationObserver((records) => { window.writes += records.length; });
                for (const id of ['banner', 'stat-labels', 'stat-answered'])
                  seen.observe(document.getElementById(id),
                               {childList: true, characterData: true, subtree: true, attributes: true});
                window.seen = seen; }""")
            with page.expect_response(lambda r: "/api/stats" in r.url, timeout=WAIT_MS):
                pass  # the next poll's answer, the same as the last one's
            page.wait_for_timeout(300)  # (for the page to have handled it)
            assert page.evaluate("window.writes") == 0
            shown = store_steps(run_dir, page.evaluate("window.labelApp.current"))
            assert f"clips from agent step {shown[0]:,} and agent step {shown[1]:,}" in page.inner_text("#qinfo")
            (run_dir / "metrics.csv").write_text("step,labels,learned_return\n0,0,\n2048,1,-3.5\n4096,2,-1.0\n")
            page.evaluate("location.reload()")
            page.wait_for_function("document.getElementById('curve-labels').getAttribute('points').split(' ').length"
                                   " === 3", timeout=WAIT_MS)
            assert len(page.get_attribute("#curve-return", "points").split()) == 2  # (step 0 has no return)
            # playback: speed clamped to the allowed values, pause, frame steps
            page.evaluate("localStorage.setItem('rlhf-control.speed', '7')")
            page.reload()
            page.wait_for_function("window.labelApp && window.labelApp.current !== null", timeout=WAIT_MS)
            assert page.evaluate("window.labelApp.speed") == 1
            page.select_option("#speed", "2")
            assert page.evaluate("window.labelApp.videos().map(v => v.playbackRate)") == [2, 2]
            page.keyboard.press("p")
            assert page.evaluate("window.labelApp.paused") is True
            t = page.evaluate("window.labelApp.videos()[0].currentTime")
            page.keyboard.press(".")
            page.wait_for_function(f"window.labelApp.videos()[0].currentTime > {t}", timeout=WAIT_MS)
            # the run ends: the page says so, and still says so once the server has gone
            srv.app.set_run(state="finished")
            page.wait_for_selector("#banner.finished", timeout=WAIT_MS)
            srv.stop()
            page.wait_for_selector("#banner.offline", timeout=WAIT_MS)
            assert "The run has finished" in page.inner_text("#banner")
        finally:
            ctx.close()


def test_phone_layout_stacks_the_clips_and_hides_key_hints(browser, run_dir):
    with start_server(run_dir, port=0) as srv:
        ctx = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                                  bypass_csp=True)
        ctx.add_init_script("localStorage.setItem('rlhf-control.labeller', 'dee')")
        page = ctx.new_page()
        try:
            page.goto(srv.url)
            page.wait_for_function("window.labelApp && window.labelApp.current !== null", timeout=WAIT_MS)
            boxes = page.evaluate("""() => [...document.querySelectorAll('.slot:not(.off) .clip')]
                .map(c => c.getBoundingClientRect()).map(r => [r.left, r.top, r.width, r.bottom])""")
            (l1, t1, w1, b1), (l2, t2, w2, _) = boxes
            assert t2 >= b1 - 1 and w1 > 300 and w2 > 300  # one above the other, full width
            assert not page.is_visible(".answer .keys") and not page.is_visible(".clip .hint")
            assert page.evaluate("document.getElementById('btn-first').getBoundingClientRect().height") >= 48
        finally:
            ctx.close()
