"""PreferenceStore on real SQLite files: round trips, answers, concurrency, durability, export/import."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from rlhf_control.store.answers import EXPORT_FIELDS
from rlhf_control.store.errors import AlreadyAnsweredError, QueryRetiredError, StoreError, UnknownQueryError
from rlhf_control.store.io import export_csv, export_jsonl, import_jsonl
from rlhf_control.store.store import PreferenceStore
from rlhf_control.types import Answer, Segment, SegmentPair, StackedFrames

REPO = Path(__file__).resolve().parents[1]


def seg(rng: np.random.Generator, uid: int = -1, t: int = 5, rewards: bool = True, episode: int = 0) -> Segment:
    return Segment(obs=rng.normal(size=(t, 3)).astype(np.float32), acts=rng.normal(size=(t, 2)),
                   true_rewards=rng.normal(size=t) if rewards else None, episode_id=episode,
                   start_step=10 * max(uid, 0), uid=uid)


def pair(rng: np.random.Generator, uid: int = -1) -> SegmentPair:
    return SegmentPair(seg(rng, uid, episode=1), seg(rng, -1 if uid < 0 else uid + 1, episode=2))


def snapshot(store: PreferenceStore) -> tuple:
    """Everything observable about answers and queries, to check that a failed call changed nothing."""
    return (store.answers_since(0), [(q.query_id, q.status, q.assigned_to) for q in store.pending_queries()],
            store.stats(), store.count_answers())


@pytest.fixture
def store(tmp_path: Path) -> PreferenceStore:
    s = PreferenceStore.create(tmp_path / "run" / "prefs.sqlite")
    yield s
    s.close()


def test_segment_round_trip_plain_stacked_and_no_rewards(store: PreferenceStore) -> None:
    rng = np.random.default_rng(0)
    plain = Segment(obs=rng.normal(size=(4, 3)), acts=np.array([0, 1, 2, 1]), true_rewards=[1.0, 2, 3, 4],
                    episode_id=7, start_step=40, render_ref={"qpos": np.arange(3.0), "n": np.int64(2)}, uid=42)
    frames = rng.integers(0, 255, size=(4 + 3, 6, 5), dtype=np.uint8)
    stacked = Segment(obs=StackedFrames(frames, 4), acts=np.array([3, 0, 1, 2]), true_rewards=None,
                      episode_id=8, start_step=3, render_ref=object())
    assert store.add_segment(plain) == 42
    sid = store.add_segment(stacked)
    assert sid != 42 and store.add_segment(plain) == 42  # re-adding a stored uid is a no-op
    a, b = store.get_segments([42, sid])
    assert a.uid == 42 and (a.episode_id, a.start_step) == (7, 40)
    np.testing.assert_array_equal(a.obs, plain.obs)
    assert a.acts.dtype == plain.acts.dtype and np.array_equal(a.acts, plain.acts)
    np.testing.assert_array_equal(a.true_rewards, [1, 2, 3, 4])
    assert a.render_ref == {"qpos": [0.0, 1.0, 2.0], "n": 2}
    assert isinstance(b.obs, StackedFrames) and b.obs.k == 4 and b.obs.dtype == np.uint8
    np.testing.assert_array_equal(b.obs.frames, frames)
    assert b.true_rewards is None and b.render_ref is None and b.uid == sid
    assert store.get_segment(sid).length == 4
    with pytest.raises(ValueError, match="already stored"):
        store.add_segment(Segment(obs=np.zeros((2, 3)), acts=np.zeros(2), uid=42))
    with pytest.raises(ValueError, match="not in the store"):
        store.get_segment(999)


def test_add_answer_undo_and_idempotent_rerecord(store: PreferenceStore) -> None:
    rng = np.random.default_rng(1)
    q1 = store.add_query(pair(rng, 0), step=100)
    q2 = store.add_query(pair(rng), step=200)
    assert q2.pair.first.uid not in (-1, q1.pair.first.uid)
    assert [q.query_id for q in store.pending_queries()] == [q1.query_id, q2.query_id]
    assert store.record_answer(Answer(q1.query_id, 1, "ann", 2.5)) is True
    assert store.record_answer(Answer(q1.query_id, 1, "ann", 9.0)) is False  # same label+labeller: no-op
    assert store.record_answer(Answer(q2.query_id, None, "bob")) is True
    assert store.count_answers() == 2 and store.count_labels() == 1 and store.count_pending() == 0
    assert store.answered_query_ids() == {q1.query_id, q2.query_id}
    (lab,) = store.labels()
    assert lab.value == 1 and lab.pair.first.uid == q1.pair.first.uid
    np.testing.assert_array_equal(lab.pair.second.obs, q1.pair.second.obs)
    s = store.stats()
    assert (s["answered"], s["labels"], s["skipped"], s["pending"]) == (2, 1, 1, 0)
    assert s["answers_per_minute"] == pytest.approx(2 / 5)
    assert [a for _, a in store.answers_since(0)] == [Answer(q1.query_id, 1, "ann", 2.5),
                                                      Answer(q2.query_id, None, "bob", 0.0)]
    last_id = store.answers_since(0)[-1][0]
    assert store.undo_last("ann") == q1.query_id and store.undo_last("ann") is None
    assert store.count_labels() == 0 and store.get_query(q1.query_id).status == "pending"
    assert store.claim_next("ann").query_id == q1.query_id  # undone query is held for its labeller
    assert store.record_answer(Answer(q1.query_id, -1, "ann")) is True  # a new answer after undo
    assert [(i > last_id, a.label) for i, a in store.answers_since(last_id)] == [(True, -1)]
    assert store.labels(limit=1)[0].value == -1


def test_bad_inputs_raise_and_leave_store_unchanged(store: PreferenceStore) -> None:
    rng = np.random.default_rng(2)
    q1 = store.add_query(pair(rng), 0)
    q2 = store.add_query(pair(rng), 0)
    store.record_answer(Answer(q1.query_id, 0, "ann"))
    assert store.retire(q2.query_id) is True and store.retire(q2.query_id) is False
    before = snapshot(store)
    bad_label = Answer(q1.query_id, 1, "ann")
    object.__setattr__(bad_label, "label", 2)  # bypass Answer's own check: the store must check too
    cases = [(Answer(q1.query_id, 1, "ann"), AlreadyAnsweredError), (Answer(q1.query_id, 0, "bob"), AlreadyAnsweredError),
             (Answer(999, 1, "ann"), UnknownQueryError), (Answer(q2.query_id, 1, "ann"), QueryRetiredError),
             (bad_label, ValueError), (Answer(q2.query_id, 1, ""), ValueError),
             (Answer(q2.query_id, 1, "ann", seconds=float("nan")), ValueError)]
    for answer, exc in cases:
        with pytest.raises(exc) as info:
            store.record_answer(answer)
        assert "\n" not in str(info.value)
        assert snapshot(store) == before
    with pytest.raises(UnknownQueryError):
        store.retire(999)
    assert issubclass(AlreadyAnsweredError, ValueError) and issubclass(StoreError, ValueError)


def test_claim_lease_release_exclude_and_retire_older(tmp_path: Path) -> None:
    now = [1000.0]
    store = PreferenceStore.create(tmp_path / "s.sqlite", clock=lambda: now[0])
    rng = np.random.default_rng(3)
    ids = [store.add_query(pair(rng), step).query_id for step in (10, 20, 30)]
    a = store.claim_next("ann", lease_s=60)
    assert a.query_id == ids[0] and a.assigned_to == "ann"
    assert store.claim_next("ann", lease_s=60).query_id == ids[0]  # own held query first
    assert store.claim_next("ann", lease_s=60, exclude=[ids[0]]).query_id == ids[1]  # preload the next
    assert store.claim_next("bob").query_id == ids[2]
    assert store.claim_next("cat") is None
    now[0] += 61  # ann's 60 s leases ran out, bob's 120 s one did not
    assert store.claim_next("cat").query_id == ids[0]
    assert store.claim_next("eve").query_id == ids[1] and store.claim_next("fay") is None
    assert store.release(ids[2], "ann") is False and store.release(ids[2], "bob") is True
    assert store.claim_next("dan", exclude=[ids[1]]).query_id == ids[2]
    assert store.retire_older_than(25) == 2 and store.count_pending() == 1
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count_pending()


def test_concurrent_claims_never_share_a_query(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    shared = PreferenceStore.create(path)
    rng = np.random.default_rng(4)
    n = 120
    for _ in range(n):
        shared.add_query(pair(rng), 0)
    # Half the threads share one store object, half have their own (as separate processes would).
    stores = [shared] * 4 + [PreferenceStore.open(path) for _ in range(4)]
    got: list[list[int]] = [[] for _ in stores]
    barrier = threading.Barrier(len(stores))

    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait()
            while (rec := stores[i].claim_next(f"l{i}", exclude=got[i])) is not None:
                got[i].append(rec.query_id)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    claimed = [q for g in got for q in g]
    assert len(claimed) == len(set(claimed)) == n
    held = {q.query_id: q.assigned_to for q in shared.pending_queries()}
    assert all(held[q] == f"l{i}" for i, g in enumerate(got) for q in g)
    for s in set(stores):
        s.close()


def test_concurrent_record_answer_loses_nothing(store: PreferenceStore) -> None:
    rng = np.random.default_rng(5)
    qids = [store.add_query(pair(rng), 0).query_id for _ in range(400)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for q in qids[i::8]:
                assert store.record_answer(Answer(q, (q % 3) - 1, f"l{i}"))
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.count_answers() == 400 and store.answered_query_ids() == set(qids)
    assert {a.query_id: a.label for _, a in store.answers_since(0)} == {q: (q % 3) - 1 for q in qids}


def test_answer_survives_sigkill_of_child(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with PreferenceStore.create(path) as s:
        qid = s.add_query(pair(np.random.default_rng(6)), 0).query_id
    code = ("import os, signal, sys; from rlhf_control.store.store import PreferenceStore; "
            "from rlhf_control.types import Answer; s = PreferenceStore.open(sys.argv[1]); "
            "assert s.record_answer(Answer(int(sys.argv[2]), -1, 'child', 1.5)); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(qid)], cwd=REPO, timeout=60,
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert Path(f"{path}-wal").exists()  # killed before any checkpoint: the answer lives in the WAL
    with PreferenceStore.open(path) as s:
        assert [a for _, a in s.answers_since(0)] == [Answer(qid, -1, "child", 1.5)]


def test_export_import_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    src = PreferenceStore.create(tmp_path / "a.sqlite")
    dst = PreferenceStore.create(tmp_path / "b.sqlite")
    pairs = [pair(rng, uid) for uid in range(0, 8, 2)]
    for p in pairs:
        for s in (src, dst):
            s.add_query(p, 5)
    # dst has query 4's segments but not the query itself: import creates it from the row's ids.
    extra = src.add_query(SegmentPair(pairs[0].second, pairs[1].first), 6).query_id
    for q, (label, who) in enumerate([(1, "ann"), (None, "bob"), (0, "ann"), (-1, "bob"), (1, "cat")], 1):
        src.record_answer(Answer(q, label, who, seconds=q / 2))
    assert export_jsonl(src, tmp_path / "a.jsonl") == 5 and export_csv(src, tmp_path / "a.csv") == 5
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert rows[1]["label"] is None and rows[1]["skipped"] is True and rows[0]["first_episode"] == 1
    csv_lines = (tmp_path / "a.csv").read_text().splitlines()
    assert csv_lines[0].split(",") == list(EXPORT_FIELDS) and len(csv_lines) == 6
    dst.record_answer(Answer(1, 1, "ann", 0.5))  # already present: import skips it
    assert import_jsonl(dst, tmp_path / "a.jsonl") == 4
    assert import_jsonl(dst, tmp_path / "a.jsonl") == 0  # idempotent
    assert [(a.query_id, a.label, a.labeller, a.seconds) for _, a in dst.answers_since(0)] == \
        [(a.query_id, a.label, a.labeller, a.seconds) for _, a in src.answers_since(0)]
    assert dst.get_query(extra).first_id == pairs[0].second.uid
    export_jsonl(dst, tmp_path / "b.jsonl")
    # Row 0 was answered in dst itself (its own time); the imported rows keep the file's times.
    strip = [{k: v for k, v in r.items() if k != "answer_id" and (i or k != "answered_at")}
             for i, r in enumerate(rows)]
    assert [{k: v for k, v in json.loads(x).items() if k != "answer_id" and (i or k != "answered_at")}
            for i, x in enumerate((tmp_path / "b.jsonl").read_text().splitlines())] == strip
    src.close()
    dst.close()


def test_import_errors_name_the_line_and_import_nothing(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    store = PreferenceStore.create(tmp_path / "s.sqlite")
    q = store.add_query(pair(rng), 0).query_id
    good = json.dumps({"query_id": q, "label": 1, "labeller": "ann"})
    bad_lines = {"not json": ValueError, json.dumps({"query_id": q, "label": 3, "labeller": "x"}): ValueError,
                 json.dumps({"query_id": 77, "label": 1, "labeller": "x"}): UnknownQueryError,
                 json.dumps({"query_id": q, "label": 1}): ValueError,
                 json.dumps({"query_id": q, "label": -1, "labeller": "bob"}): AlreadyAnsweredError}
    for bad, exc in bad_lines.items():
        f = tmp_path / "in.jsonl"
        f.write_text(f"{good}\n\n{bad}\n")
        with pytest.raises(exc, match=r"in\.jsonl:3: ") as info:
            import_jsonl(store, f)
        assert "\n" not in str(info.value)
        assert store.count_answers() == 0  # all or nothing: line 1 was rolled back
    store.close()


def test_open_refuses_missing_existing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no preference store"):
        PreferenceStore.open(tmp_path / "missing.sqlite")
    PreferenceStore.create(tmp_path / "ok.sqlite").close()
    with pytest.raises(StoreError, match="already exists"):
        PreferenceStore.create(tmp_path / "ok.sqlite")
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t(x)")
    damaged = bytearray((tmp_path / "ok.sqlite").read_bytes())
    damaged[:16] = b"garbage garbage!"
    broken_schema = bytearray((tmp_path / "ok.sqlite").read_bytes())  # header fine, page 1 body garbage
    broken_schema[100:4096] = np.random.default_rng(11).bytes(3996)
    files = {"broken_schema.sqlite": bytes(broken_schema), "text.txt": b"hello\n" * 50, "random.bin": np.random.default_rng(9).bytes(4096), "empty": b"",
             "damaged.sqlite": bytes(damaged), "other.sqlite": other.read_bytes()}
    for name, data in files.items():
        p = tmp_path / name
        p.write_bytes(data)
        for opener in (PreferenceStore.open, PreferenceStore.open_or_create):
            with pytest.raises(StoreError, match="not a rlhf-control preference store") as info:
                opener(p)
            assert str(p) in str(info.value) and "\n" not in str(info.value)
        assert p.read_bytes() == data
        assert not Path(f"{p}-wal").exists() and not Path(f"{p}-journal").exists()


def test_open_or_create_reopens_and_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with PreferenceStore.open_or_create(path) as s:
        q = s.add_query(pair(np.random.default_rng(10)), 3).query_id
        s.record_answer(Answer(q, 0, "ann"))
    with PreferenceStore.open_or_create(path) as s:
        assert s.count_labels() == 1 and s.labels()[0].value == 0
        assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert os.path.getsize(path) > 0


def test_first_round_segments_are_the_earliest_rounds_distinct_clips(store: PreferenceStore) -> None:
    rng = np.random.default_rng(4)
    assert store.first_round_segments(10) == []
    a, b, c, d = (seg(rng, uid=u) for u in (1, 2, 3, 4))
    store.add_query(SegmentPair(a, b), step=0)
    store.add_query(SegmentPair(b, c), step=0)  # b again: one clip, however often it was compared
    store.add_query(SegmentPair(c, d), step=4096)  # a later round
    got = store.first_round_segments(10)
    assert [s.uid for s in got] == [1, 2, 3]
    np.testing.assert_array_equal(got[1].obs, b.obs)
    assert [s.uid for s in store.first_round_segments(2)] == [1, 2]


def test_segments_keep_their_agent_step_and_a_version_2_store_gets_the_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    path = tmp_path / "s.sqlite"
    with PreferenceStore.create(path) as store:
        a, b = seg(rng, uid=1), seg(rng, uid=2)
        store.add_query(SegmentPair(replace_step(a, 4096), replace_step(b, -1)), step=4200)
        assert [s.agent_step for s in store.get_segments([1, 2])] == [4096, -1]
        assert store.agent_steps([1, 2]) == {1: 4096, 2: -1}
    con = sqlite3.connect(path, isolation_level=None)  # what version 2 wrote: no agent_step column
    con.executescript("BEGIN; ALTER TABLE segments DROP COLUMN agent_step; PRAGMA user_version = 2; COMMIT;")
    con.close()
    with PreferenceStore.open(path) as store:
        assert [s.agent_step for s in store.get_segments([1, 2])] == [-1, -1]  # unknown, not invented
        store.add_segment(replace_step(seg(rng, uid=3), 8192))
        assert store.agent_steps([3]) == {3: 8192}
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 3
    con.close()


def replace_step(s: Segment, step: int) -> Segment:
    from dataclasses import replace

    return replace(s, agent_step=step)
