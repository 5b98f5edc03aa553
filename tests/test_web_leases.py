"""Leases that follow the labeller: heartbeats renew a page's holds, a hidden page's pairs are free
for others and come back to it, a reserve pair only while another stays free, the newest pair first,
held pairs never retired; the pending split and the run's state in the stats."""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pytest

from rlhf_control.rundir import STORE_FILE
from rlhf_control.store.store import PreferenceStore
from rlhf_control.web.demo import make_demo_run
from rlhf_control.web.server import start_server


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("web_leases") / "run"
    make_demo_run(run, n_segments=8, n_queries=6, seed=4)
    return run


@pytest.fixture
def run_dir(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "run")
    return tmp_path / "run"


def jcall(srv, method: str, path: str, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{srv.port}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        data = r.read()
        return r.status, (json.loads(data) if data else None)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_store_holds_renew_take_back_and_never_retire_a_held_pair(run_dir):
    clock = Clock()
    with PreferenceStore.open(run_dir / STORE_FILE, clock=clock) as store:
        ids = [q.query_id for q in store.pending_queries()]
        newest = store.claim_next("ann", lease_s=30, newest_first=True)
        assert newest.query_id == max(ids)  # the newest pair first
        assert store.claim_next("bob", lease_s=30).query_id == min(ids)  # (oldest first by default)
        clock.t += 20
        assert store.hold("ann", [newest.query_id, min(ids), 999], lease_s=30) == [newest.query_id]  # bob's stays his
        clock.t += 20  # ann's renewed lease still runs, bob's ran out
        assert store.get_query(newest.query_id).lease_until == 1000 + 20 + 30
        assert store.claim_next("cat", exclude=[i for i in ids if i not in (newest.query_id, min(ids))]) \
            .query_id == min(ids)
        # a pair someone holds is never retired as stale; a free one is
        assert store.retire_older_than(10**9, keep_held=True) == len(ids) - 2
        assert {q.query_id for q in store.pending_queries()} == {newest.query_id, min(ids)}
        # released (the page was hidden), the pair is free; the heartbeat on return takes it again
        assert store.release(newest.query_id, "ann")
        assert store.hold("ann", [newest.query_id], lease_s=30) == [newest.query_id]
        assert store.get_query(newest.query_id).assigned_to == "ann"
        with pytest.raises(ValueError):
            store.hold("", [1])


def test_heartbeat_reserve_and_pending_split_over_http(run_dir):
    with start_server(run_dir, port=0) as srv:
        srv.app.scan_every_s = 0.0
        s, stats = jcall(srv, "GET", "/api/stats?labeller=ann")
        assert s == 200 and stats["ready"] == 6 and stats["rendering"] == 0 and stats["held_by_others"] == 0
        assert stats["run"]["state"] == "stopped"  # no trainer: `rlhf-control label`
        s, a = jcall(srv, "GET", "/api/next?labeller=ann")
        assert a["lease_s"] == srv.app.lease_s == 30.0
        s, b = jcall(srv, "GET", f"/api/next?labeller=bob&exclude={a['query_id']}")
        assert b["query_id"] < a["query_id"]  # newest first
        s, stats = jcall(srv, "GET", "/api/stats?labeller=ann")
        assert (stats["ready"], stats["held_by_you"], stats["held_by_others"]) == (4, 1, 1)
        # a reserve pair only while at least one other stays free for other labellers
        got = [jcall(srv, "GET", f"/api/next?labeller=l{i}")[1]["query_id"] for i in range(3)]
        assert len(set(got)) == 3
        with PreferenceStore.open(run_dir / STORE_FILE) as store:
            assert sum(1 for *_, h in store.pending_overview() if h is None) == 1
        assert jcall(srv, "GET", f"/api/next?labeller=ann&exclude={a['query_id']}&reserve=1")[0] == 204
        assert jcall(srv, "GET", f"/api/next?labeller=ann&exclude={a['query_id']}")[0] == 200  # (not a reserve)
        # the heartbeat renews what ann holds and says what she lost
        s, hb = jcall(srv, "POST", "/api/heartbeat", {"labeller": "ann", "query_ids": [a["query_id"], b["query_id"]]})
        assert s == 200 and hb["held"] == [a["query_id"]]
        srv.app.set_run(state="waiting", step=4096, wanted=12, budget=40)
        s, stats = jcall(srv, "GET", "/api/stats")
        assert stats["run"] == {"state": "waiting", "budget": 40, "step": 4096, "wanted": 12} and stats["budget"] == 40
        with pytest.raises(ValueError):
            srv.app.set_run(state="dancing")


def test_progress_curve_from_the_metrics(run_dir):
    with start_server(run_dir, port=0) as srv:
        assert jcall(srv, "GET", "/api/progress") == (200, {"rows": []})  # no metrics yet
        lines = ["step,iteration,labels,learned_return"] + \
            [f"{2048 * i},{i},{3 * i},{'' if i == 0 else -100.0 + i}" for i in range(300)] + ["oops,,x,"]
        (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")
        rows = jcall(srv, "GET", "/api/progress")[1]["rows"]
        assert len(rows) == 200 and rows[0] == [0, 0, None] and rows[-1] == [2048 * 299, 897, -100.0 + 299]
        assert [r[0] for r in rows] == sorted(r[0] for r in rows)
