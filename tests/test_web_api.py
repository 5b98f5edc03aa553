"""The labelling server's JSON API, clip serving, tokens and durability, without a browser."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rlhf_control.oracles.human import HumanOracle
from rlhf_control.rundir import STORE_FILE
from rlhf_control.store.errors import StoreError
from rlhf_control.store.store import PreferenceStore
from rlhf_control.types import Answer, SegmentPair
from rlhf_control.web.app import ApiError, run_identity
from rlhf_control.web.demo import BrightnessRenderer, make_demo_run, make_segments
from rlhf_control.web.server import parse_range, start_server

N_QUERIES = 24


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("web_api") / "run"
    make_demo_run(run, n_segments=8, n_queries=N_QUERIES, seed=3,
                  instructions="Pick the brighter clip.")
    return run


@pytest.fixture
def run_dir(template, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(template, dst)
    return dst


@pytest.fixture
def server(run_dir):
    srv = start_server(run_dir, port=0)
    yield srv
    srv.stop()


def call(srv, method: str, path: str, body=None, headers=None, raw: bytes | None = None, host: str | None = None):
    """One request on a fresh connection -> (status, headers, body bytes)."""
    conn = http.client.HTTPConnection(host or "127.0.0.1", srv.port, timeout=10)
    h = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def jcall(srv, method, path, body=None, **kw):
    status, _, data = call(srv, method, path, body, **kw)
    return status, (json.loads(data) if data else None)


def snapshot(store: PreferenceStore) -> tuple:
    """Everything an API call could change: every query row (status, holder, lease, clips) and every answer."""
    queries = []
    qid = 1
    while True:
        try:
            queries.append(store.get_query(qid))
        except ValueError:
            break
        qid += 1
    return tuple(queries), tuple(store.answers_since(0))


# ---------------------------------------------------------------- claiming


def test_next_hands_each_query_to_one_labeller_and_respects_exclude(server):
    s, a = jcall(server, "GET", "/api/next?labeller=ann")
    assert s == 200 and a["first"].startswith("/clips/") and a["second"].startswith("/clips/")
    s, b = jcall(server, "GET", "/api/next?labeller=bob")
    assert s == 200 and b["query_id"] != a["query_id"]
    # ann's own held query comes back to her; exclude makes her preload another one
    assert jcall(server, "GET", "/api/next?labeller=ann")[1]["query_id"] == a["query_id"]
    s, c = jcall(server, "GET", f"/api/next?labeller=ann&exclude={a['query_id']}")
    assert c["query_id"] not in (a["query_id"], b["query_id"])
    # the clip URLs are served
    st, hdr, data = call(server, "GET", a["first"])
    assert st == 200 and hdr["content-type"] == "video/mp4" and data[4:8] == b"ftyp"
    # once every query is held, the next labeller gets 204
    held = {a["query_id"], b["query_id"], c["query_id"]}
    for i in range(N_QUERIES):
        s, q = jcall(server, "GET", f"/api/next?labeller=l{i}")
        if s == 204:
            break
        assert q["query_id"] not in held
        held.add(q["query_id"])
    assert len(held) == N_QUERIES
    assert call(server, "GET", "/api/next?labeller=late")[0] == 204


def test_next_skips_queries_until_their_clips_exist(run_dir):
    with PreferenceStore.open(run_dir / STORE_FILE) as store:
        for q in store.pending_queries():
            store.retire(q.query_id)
        segs = make_segments(2, np.random.default_rng(0), start_uid=100)
        q_new = store.add_query(SegmentPair(segs[0], segs[1]), step=5)  # no clips yet
    with start_server(run_dir, port=0) as srv:
        srv.app.scan_every_s = 0.0
        assert call(srv, "GET", "/api/next?labeller=ann")[0] == 204
        with PreferenceStore.open(run_dir / STORE_FILE) as store:
            assert store.get_query(q_new.query_id).assigned_to is None  # the no-clip claim was given back
            oracle = HumanOracle(store, BrightnessRenderer())  # renders pending queries without clips
            assert oracle.wait_rendered(timeout=30)
            oracle.close()
        s, q = jcall(srv, "GET", "/api/next?labeller=ann")
        assert s == 200 and q["query_id"] == q_new.query_id
        assert jcall(srv, "GET", "/api/stats")[1]["waiting_for_clips"] == 0


# ---------------------------------------------------------------- answers, undo


def test_answer_undo_and_idempotent_repeat(server, run_dir):
    q = jcall(server, "GET", "/api/next?labeller=ann")[1]["query_id"]
    ans = {"query_id": q, "label": -1, "labeller": "ann", "seconds": 2.5}
    assert jcall(server, "POST", "/api/answer", ans) == (200, {"stored": True, "query_id": q})
    assert jcall(server, "POST", "/api/answer", ans) == (200, {"stored": False, "query_id": q})
    q2 = jcall(server, "GET", "/api/next?labeller=ann")[1]["query_id"]
    assert jcall(server, "POST", "/api/answer", {"query_id": q2, "label": None, "labeller": "ann"})[0] == 200
    with PreferenceStore.open(run_dir / STORE_FILE) as store:
        got = {a.query_id: (a.label, a.labeller, a.seconds) for _, a in store.answers_since(0)}
        assert got == {q: (-1, "ann", 2.5), q2: (None, "ann", 0.0)}
        # someone else's undo does not touch ann's answers
        assert jcall(server, "POST", "/api/undo", {"labeller": "bob"}) == (200, {"query_id": None, "query": None,
                                                                               "trained": False})
        s, u = jcall(server, "POST", "/api/undo", {"labeller": "ann"})
        assert s == 200 and u["query_id"] == q2 and u["query"]["first"].startswith("/clips/")
        rec = store.get_query(q2)
        assert rec.status == "pending" and rec.assigned_to == "ann"
        assert [a.query_id for _, a in store.answers_since(0)] == [q]
        assert jcall(server, "POST", "/api/undo", {"labeller": "ann"})[1]["query_id"] == q
        assert store.count_answers() == 0
    stats = jcall(server, "GET", "/api/stats")[1]
    assert stats["answered"] == 0 and stats["pending"] == N_QUERIES


def test_answers_and_clips_are_tied_to_their_run(server, run_dir):
    # A page keeps answers the server could not take, and resends them to whatever server answers on
    # its port later: another run's would store them on that run's pair of the same number.
    run_id = jcall(server, "GET", "/api/stats")[1]["run_id"]
    assert len(run_id) == 12 and run_id == run_identity(run_dir)
    q = jcall(server, "GET", "/api/next?labeller=ann")[1]
    assert q["first"].endswith(f"?run={run_id}") and q["second"].endswith(f"?run={run_id}")  # cache keys per run
    assert call(server, "GET", q["first"])[0] == 200
    ans = {"query_id": q["query_id"], "label": 1, "labeller": "ann", "run": "0123456789ab"}
    status, body = jcall(server, "POST", "/api/answer", ans)
    assert status == 409 and "given in run '0123456789ab'" in body["error"] and "not stored" in body["error"]
    assert jcall(server, "GET", "/api/stats")[1]["answered"] == 0
    assert jcall(server, "POST", "/api/answer", dict(ans, run=run_id)) == (200, {"stored": True, "query_id": q["query_id"]})
    assert q["run"] == run_id  # each pair names its run: a page keeps and sends its answer with it
    # A page still showing the pairs of the run served on this port before holds, renews and gives
    # back none of this run's pairs of the same numbers.
    other = "0123456789ab"
    nxt = jcall(server, "GET", "/api/next?labeller=ann")[1]["query_id"]
    def beat(name, run):
        return jcall(server, "POST", "/api/heartbeat", {"labeller": name, "query_ids": [nxt], "run": run})[1]["held"]

    def release(run):
        return jcall(server, "POST", "/api/release", {"query_id": nxt, "labeller": "ann", "run": run})[1]["released"]

    assert beat("ann", other) == [] and release(other) is False  # ann's hold stays as it was
    assert beat("ann", run_id) == [nxt] and release(run_id) is True
    assert beat("bob", other) == []  # a free pair is not taken either
    assert beat("bob", run_id) == [nxt]
    # a later run in the same folder (a config created at another time) is another run
    doc = (run_dir / "config.toml").read_text()
    (run_dir / "config.toml").write_text('[meta]\ncreated = "2099-01-01T00:00:00"\n\n' + doc)
    later = run_identity(run_dir)
    (run_dir / "config.toml").write_text('[meta]\ncreated = "2099-01-01T00:00:01"\n\n' + doc)
    assert len({run_id, later, run_identity(run_dir)}) == 3


def test_undo_of_a_pages_own_last_answer_only(server, run_dir):
    q1 = jcall(server, "GET", "/api/next?labeller=ann")[1]["query_id"]
    assert jcall(server, "POST", "/api/answer", {"query_id": q1, "label": 1, "labeller": "ann"})[0] == 200
    q2 = jcall(server, "GET", "/api/next?labeller=ann")[1]["query_id"]
    assert jcall(server, "POST", "/api/answer", {"query_id": q2, "label": -1, "labeller": "ann"})[0] == 200
    # a page whose last answer was q1 (q2 came from another tab) must not take back q2
    status, body = jcall(server, "POST", "/api/undo", {"labeller": "ann", "query_id": q1})
    assert status == 409 and f"pair {q1} is not 'ann''s last answer (pair {q2} is)" in body["error"]
    assert jcall(server, "GET", "/api/stats")[1]["answered"] == 2
    assert jcall(server, "POST", "/api/undo", {"labeller": "ann", "query_id": q2})[1]["query_id"] == q2
    # another labeller's answer on a pair: no advice to undo what is not theirs
    status, body = jcall(server, "POST", "/api/answer", {"query_id": q1, "label": -1, "labeller": "bob"})
    assert status == 409 and "undo" not in body["error"]
    status, body = jcall(server, "POST", "/api/answer", {"query_id": q1, "label": -1, "labeller": "ann"})
    assert status == 409 and "(undo it first)" in body["error"]


def test_an_undo_says_whether_the_reward_model_had_trained_on_the_answer(server, run_dir):
    qids = []
    for label in (1, -1, 0):
        q = jcall(server, "GET", "/api/next?labeller=ann")[1]["query_id"]
        assert jcall(server, "POST", "/api/answer", {"query_id": q, "label": label, "labeller": "ann"})[0] == 200
        qids.append(q)
    with PreferenceStore.open(run_dir / STORE_FILE) as store:
        answer_of = {a.query_id: aid for aid, a in store.answers_since(0)}
    # bob's later answer is the newest; the reward model has trained up to ann's second
    q = jcall(server, "GET", "/api/next?labeller=bob")[1]["query_id"]
    assert jcall(server, "POST", "/api/answer", {"query_id": q, "label": 1, "labeller": "bob"})[0] == 200
    server.app.set_run(trained_answer_id=answer_of[qids[1]])
    undone = [jcall(server, "POST", "/api/undo", {"labeller": "ann", "query_id": q}) for q in reversed(qids)]
    assert [(s, u["query_id"], u["trained"]) for s, u in undone] == [
        (200, qids[2], False), (200, qids[1], True), (200, qids[0], True)]
    # a run that has not trained yet (or no trainer and no checkpoint): never
    q = jcall(server, "GET", "/api/next?labeller=ann")[1]["query_id"]
    assert jcall(server, "POST", "/api/answer", {"query_id": q, "label": 1, "labeller": "ann"})[0] == 200
    server.app.set_run(trained_answer_id=0)
    assert jcall(server, "POST", "/api/undo", {"labeller": "ann"})[1]["trained"] is False


BAD_REQUESTS = [
    # (name, method, path, json body or raw bytes, headers, expected status)
    ("unknown query", "POST", "/api/answer", {"query_id": 999, "label": 1, "labeller": "ann"}, None, 404),
    ("label 2", "POST", "/api/answer", {"query_id": 1, "label": 2, "labeller": "ann"}, None, 400),
    ("label string", "POST", "/api/answer", {"query_id": 1, "label": "1", "labeller": "ann"}, None, 400),
    ("label bool", "POST", "/api/answer", {"query_id": 1, "label": True, "labeller": "ann"}, None, 400),
    ("label half", "POST", "/api/answer", {"query_id": 1, "label": 0.5, "labeller": "ann"}, None, 400),
    ("label missing", "POST", "/api/answer", {"query_id": 1, "labeller": "ann"}, None, 400),
    ("query id string", "POST", "/api/answer", {"query_id": "1", "label": 1, "labeller": "ann"}, None, 400),
    ("query id missing", "POST", "/api/answer", {"label": 1, "labeller": "ann"}, None, 400),
    ("labeller missing", "POST", "/api/answer", {"query_id": 1, "label": 1}, None, 400),
    ("labeller empty", "POST", "/api/answer", {"query_id": 1, "label": 1, "labeller": "  "}, None, 400),
    ("seconds negative", "POST", "/api/answer", {"query_id": 1, "label": 1, "labeller": "ann", "seconds": -1}, None, 400),
    ("already answered", "POST", "/api/answer", {"query_id": 2, "label": 1, "labeller": "bob"}, None, 409),
    ("retired", "POST", "/api/answer", {"query_id": 3, "label": 1, "labeller": "ann"}, None, 410),
    ("malformed json", "POST", "/api/answer", b'{"query_id": 1, "label": ', None, 400),
    ("json list", "POST", "/api/answer", b"[1, 1]", None, 400),
    ("not json", "POST", "/api/answer", b"query_id=1&label=1", {"Content-Type": "text/plain"}, 415),
    ("body too large", "POST", "/api/answer", b"x" * 70_000, None, 413),
    ("negative length", "POST", "/api/answer", b"", {"Content-Length": "-5"}, 400),
    ("heartbeat ids not a list", "POST", "/api/heartbeat", {"labeller": "carl", "query_ids": 1}, None, 400),
    ("heartbeat bad id", "POST", "/api/heartbeat", {"labeller": "carl", "query_ids": [1, "2"]}, None, 400),
    ("heartbeat too many", "POST", "/api/heartbeat", {"labeller": "carl", "query_ids": list(range(11))}, None, 400),
    ("heartbeat no labeller", "POST", "/api/heartbeat", {"query_ids": [1]}, None, 400),
    ("next bad reserve", "GET", "/api/next?labeller=ann&reserve=maybe", None, None, 400),
    ("stats bad labeller", "GET", "/api/stats?labeller=%20", None, None, 400),
    ("undo no labeller", "POST", "/api/undo", {}, None, 400),
    ("release bad id", "POST", "/api/release", {"query_id": "x", "labeller": "ann"}, None, 400),
    ("next no labeller", "GET", "/api/next", None, None, 400),
    ("next bad exclude", "GET", "/api/next?labeller=ann&exclude=1;DROP", None, None, 400),
    ("task not text", "PUT", "/api/task", {"instructions": 5}, None, 400),
    ("wrong method", "GET", "/api/answer", None, None, 405),
    ("unknown path", "GET", "/api/nothing", None, None, 404),
    ("clip missing", "GET", "/clips/nope.mp4", None, None, 404),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_4xx_json_and_leave_the_store_unchanged(server, run_dir, case):
    _, method, path, body, headers, want = case
    with PreferenceStore.open(run_dir / STORE_FILE) as store:
        store.record_answer(Answer(2, -1, "ann"))
        store.retire(3)
        store.claim_next("carl")  # a held query whose lease must not change either
        before = snapshot(store)
        raw = body if isinstance(body, bytes) else None
        h = dict(headers or {})
        if raw is not None:
            h.setdefault("Content-Type", "application/json")
        status, hdr, data = call(server, method, path, None if raw is not None else body, h, raw=raw)
        assert status == want, data
        err = json.loads(data)["error"]
        assert isinstance(err, str) and err and "\n" not in err
        assert hdr["content-type"] == "application/json"
        assert snapshot(store) == before
    assert call(server, "GET", "/api/stats")[0] == 200  # still serving


def test_many_clients_at_once_lose_and_double_nothing(server, run_dir):
    got: list[tuple[int, int]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        while True:
            s, q = jcall(server, "GET", f"/api/next?labeller=c{k}")
            if s == 204:
                return
            label = (q["query_id"] % 3) - 1
            s, r = jcall(server, "POST", "/api/answer", {"query_id": q["query_id"], "label": label, "labeller": f"c{k}"})
            assert s == 200 and r["stored"]
            with lock:
                got.append((q["query_id"], label))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(q for q, _ in got) == list(range(1, N_QUERIES + 1))  # each once
    with PreferenceStore.open(run_dir / STORE_FILE) as store:
        assert {a.query_id: a.label for _, a in store.answers_since(0)} == dict(got)


# ---------------------------------------------------------------- tokens and hosts


def test_host_beyond_loopback_needs_a_token(run_dir):
    for host in ("0.0.0.0", "127.0.0.2", "192.168.1.5"):
        with pytest.raises(ValueError, match="token"):
            start_server(run_dir, host=host, port=0)
    with pytest.raises(ValueError, match="token"):
        start_server(run_dir, host="127.0.0.2", port=0, token="has space")


def test_token_is_enforced_on_every_request(run_dir):
    tok = "s3cret-Token"
    with start_server(run_dir, host="127.0.0.2", port=0, token=tok) as srv:
        assert srv.url.endswith(f"?token={tok}")
        c = dict(host="127.0.0.2")
        answer = {"query_id": 1, "label": 1, "labeller": "ann"}
        for path in ("/", "/static/app.js", "/api/stats", "/api/next?labeller=ann", "/clips/seg0.mp4"):
            assert call(srv, "GET", path, **c)[0] == 401, path
            assert call(srv, "GET", path, headers={"Authorization": "Bearer nope"}, **c)[0] == 403, path
            sep = "&" if "?" in path else "?"
            assert call(srv, "GET", f"{path}{sep}token=nope", **c)[0] == 403, path
            assert call(srv, "GET", path, headers={"Cookie": f"rlhf_label_{srv.port}=nope"}, **c)[0] == 403
        assert call(srv, "POST", "/api/answer", answer, **c)[0] == 401
        assert call(srv, "POST", "/api/answer", answer, headers={"Authorization": "Bearer x"}, **c)[0] == 403
        with PreferenceStore.open(run_dir / STORE_FILE) as store:
            assert store.count_answers() == 0
        # the page URL with ?token= sets a cookie that then opens the API and the clips
        status, hdr, _ = call(srv, "GET", f"/?token={tok}", **c)
        assert status == 200 and "HttpOnly" in hdr["set-cookie"]
        cookie = hdr["set-cookie"].split(";")[0]
        assert call(srv, "GET", "/clips/seg0.mp4", headers={"Cookie": cookie, "Range": "bytes=0-3"}, **c)[0] == 206
        assert call(srv, "GET", "/api/stats", headers={"Authorization": f"Bearer {tok}"}, **c)[0] == 200
        assert call(srv, "POST", "/api/answer", answer, headers={"Cookie": cookie}, **c)[0] == 200


def test_loopback_without_token_refuses_foreign_host_names(server):
    status, _, data = call(server, "GET", "/api/stats", headers={"Host": "evil.example:80"})
    assert status == 403 and f"http://127.0.0.1:{server.port}/" in json.loads(data)["error"]
    assert call(server, "GET", "/api/stats", headers={"Host": f"localhost:{server.port}"})[0] == 200


def test_port_in_use_is_a_one_line_error(server, run_dir):
    with pytest.raises(ValueError, match="cannot listen"):
        start_server(run_dir, port=server.port)


# ---------------------------------------------------------------- clips


def test_parse_range():
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-10", 100) == (90, 99)
    assert parse_range("bytes=-500", 100) == (0, 99)
    assert parse_range("bytes=50-5000", 100) == (50, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None  # several ranges: whole file
    assert parse_range("items=0-1", 100) is None
    assert parse_range("bytes=9-3", 100) is None
    for bad in ("bytes=100-", "bytes=-0", "bytes=200-300"):
        with pytest.raises(ApiError) as e:
            parse_range(bad, 100)
        assert e.value.status == 416


def test_clip_range_requests(server, run_dir):
    data = (run_dir / "clips" / "seg0.mp4").read_bytes()
    n = len(data)
    for rng, (lo, hi) in {"bytes=0-99": (0, 99), "bytes=100-": (100, n - 1), "bytes=-50": (n - 50, n - 1),
                          "bytes=0-0": (0, 0), f"bytes=10-{n + 1000}": (10, n - 1)}.items():
        status, hdr, body = call(server, "GET", "/clips/seg0.mp4", headers={"Range": rng})
        assert status == 206, rng
        assert hdr["content-range"] == f"bytes {lo}-{hi}/{n}"
        assert body == data[lo:hi + 1] and int(hdr["content-length"]) == hi - lo + 1
        assert hdr["content-type"] == "video/mp4"
    status, hdr, body = call(server, "GET", "/clips/seg0.mp4")
    assert status == 200 and body == data and hdr["accept-ranges"] == "bytes"
    status, hdr, body = call(server, "GET", "/clips/seg0.mp4", headers={"Range": f"bytes={n}-"})
    assert status == 416 and hdr["content-range"] == f"bytes */{n}" and "error" in json.loads(body)
    status, hdr, body = call(server, "HEAD", "/clips/seg0.mp4", headers={"Range": "bytes=0-9"})
    assert status == 206 and body == b"" and hdr["content-length"] == "10"
    # keep-alive: two ranges on one connection, as a browser seeking does
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    for lo in (0, 500):
        conn.request("GET", "/clips/seg0.mp4", headers={"Range": f"bytes={lo}-{lo + 9}"})
        r = conn.getresponse()
        assert r.status == 206 and r.read() == data[lo:lo + 10]
    conn.close()


def test_no_path_traversal(server, run_dir):
    (run_dir / "clips" / "notes.txt").write_text("not a clip")
    os.symlink(run_dir / STORE_FILE, run_dir / "clips" / "evil.mp4")
    outside = run_dir.parent / "outside.mp4"
    outside.write_bytes(b"secret")
    for path in ("/clips/../preferences.sqlite", "/clips/%2e%2e/preferences.sqlite", "/clips/..%2fconfig.toml",
                 "/clips/%2e%2e%2foutside.mp4", "/clips/..%2F..%2Foutside.mp4", "/clips//etc/passwd",
                 "/clips/%2fetc%2fpasswd", "/clips/seg0.mp4%00.txt", "/clips/notes.txt", "/clips/evil.mp4",
                 "/clips/..\\outside.mp4", "/clips/./seg0.mp4", "/preferences.sqlite", "/static/../config.toml"):
        status, _, body = call(server, "GET", path)
        assert status == 404, path
        assert b"SQLite" not in body and b"secret" not in body


# ---------------------------------------------------------------- store and task


def test_missing_or_damaged_store_is_refused_before_serving(tmp_path):
    with pytest.raises(StoreError, match="no preference store"):
        start_server(tmp_path / "nowhere", port=0)
    (tmp_path / STORE_FILE).write_bytes(b"not a database at all" * 10)
    before = (tmp_path / STORE_FILE).read_bytes()
    with pytest.raises(StoreError, match="not a rlhf-control preference store"):
        start_server(tmp_path, port=0)
    assert (tmp_path / STORE_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORE_FILE]


def test_task_instructions_sources_and_edit(server, run_dir):
    assert jcall(server, "GET", "/api/task")[1] == {"instructions": "Pick the brighter clip.",
                                                    "source": "config.toml", "task": "demo"}
    s, t = jcall(server, "PUT", "/api/task", {"instructions": "Prefer the *calm* one.\nTake your time."})
    assert s == 200 and t["source"] == "instructions.md"
    assert (run_dir / "instructions.md").read_text() == "Prefer the *calm* one.\nTake your time."
    assert jcall(server, "GET", "/api/task")[1]["instructions"].startswith("Prefer the *calm*")
    (run_dir / "instructions.md").unlink()
    (run_dir / "config.toml").unlink()
    with start_server(run_dir, port=0, instructions="From the command line.") as srv:
        assert jcall(srv, "GET", "/api/task")[1]["instructions"] == "From the command line."
    assert jcall(server, "GET", "/api/task")[1]["source"] == "default"


# ---------------------------------------------------------------- durability


def test_sigkill_loses_no_acknowledged_answer(run_dir):
    code = "import sys; from rlhf_control.web.server import serve; serve(sys.argv[1], port=0)"
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        acked: list[tuple[int, int]] = []
        lock = threading.Lock()

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                while True:
                    conn.request("GET", f"/api/next?labeller=k{k}")
                    r = conn.getresponse()
                    body = r.read()
                    if r.status != 200:
                        return
                    qid = json.loads(body)["query_id"]
                    label = (qid % 3) - 1
                    conn.request("POST", "/api/answer", body=json.dumps(
                        {"query_id": qid, "label": label, "labeller": f"k{k}", "seconds": 1.0}),
                        headers={"Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    if r.status == 200:
                        with lock:
                            acked.append((qid, label))
            except (OSError, http.client.HTTPException):
                return  # the server was killed

        threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(acked) < N_QUERIES // 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        for t in threads:
            t.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    assert len(acked) >= N_QUERIES // 3
    with PreferenceStore.open(run_dir / STORE_FILE) as store:
        stored = {a.query_id: a.label for _, a in store.answers_since(0)}
    assert all(stored.get(q) == label for q, label in acked), (acked, stored)


# ---------------------------------------------------------------- HumanOracle


class _FailingOn:
    """A renderer that fails for one query id and draws the rest with BrightnessRenderer."""

    def __init__(self, bad: int) -> None:
        self.bad, self.inner = bad, BrightnessRenderer()

    def render_pair(self, pair, directory, query_id):
        if query_id == self.bad:
            raise RuntimeError("encoder exploded")
        return self.inner.render_pair(pair, directory, query_id)


def test_human_oracle_renders_in_background_and_records_clips(tmp_path):
    rng = np.random.default_rng(1)
    segs = make_segments(6, rng)
    with PreferenceStore.create(tmp_path / STORE_FILE) as store:
        plain = HumanOracle(store)  # no renderer: queries are stored, without clips
        q0 = store.add_query(SegmentPair(segs[0], segs[1]), 0)
        plain.submit([q0])
        assert plain.pending == 1 and plain.collect() == []
        assert store.get_query(q0.query_id).clip_first is None
        with start_server(tmp_path, port=0) as srv:
            assert call(srv, "GET", "/api/next?labeller=ann")[0] == 204

        qs = [store.add_query(SegmentPair(segs[i], segs[i + 1]), 1) for i in range(1, 5)]
        store.retire(qs[3].query_id)
        oracle = HumanOracle(store, _FailingOn(qs[1].query_id))  # also picks up q0 (pending, no clips)
        oracle.submit(qs)
        assert oracle.wait_rendered(timeout=30)
        oracle.close()
        assert [q for q, _ in oracle.errors] == [qs[1].query_id] and "encoder exploded" in oracle.errors[0][1]
        for q in (q0, qs[0], qs[2]):
            rec = store.get_query(q.query_id)
            assert rec.clip_first == f"clips/seg{q.pair.first.uid}.mp4"  # relative to the run dir
            assert (tmp_path / rec.clip_second).is_file()
        failed = store.get_query(qs[1].query_id)
        assert failed.clip_first is None and failed.status == "retired"  # failed render: asked again elsewhere
        assert store.get_query(qs[3].query_id).clip_first is None  # retired: not rendered
        assert oracle.pending == store.count_pending() == 3
        with start_server(tmp_path, port=0) as srv:
            got = {jcall(srv, "GET", f"/api/next?labeller=u{i}")[1]["query_id"] for i in range(3)}
            assert got == {q0.query_id, qs[0].query_id, qs[2].query_id}
            assert call(srv, "GET", "/api/next?labeller=u9")[0] == 204
