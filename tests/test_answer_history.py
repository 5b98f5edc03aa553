"""The answer history: undo marks an answer undone (who, when) instead of deleting it; counts, the
training window and exports use live answers only; an export can carry the history; a version-1
store is upgraded in place, keeping every answer and its id; the reward worker's copy of the window
follows labels taken out of it."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from rlhf_control.cli import main
from rlhf_control.reward import (
    EnsembleConfig,
    PreferenceDataset,
    RewardEnsemble,
    RewardTrainer,
    RewardTrainerConfig,
)
from rlhf_control.reward.worker import RewardWorker
from rlhf_control.store.db import SCHEMA_VERSION
from rlhf_control.store.io import export_csv, export_jsonl, import_jsonl
from rlhf_control.store.store import PreferenceStore
from rlhf_control.types import Answer, Label, SegmentPair
from rlhf_control.web.demo import make_segments


class Clock:
    t = 5000.0

    def __call__(self) -> float:
        return self.t


def _store_with_queries(path, n: int = 4, clock=None):
    store = PreferenceStore.create(path, **({"clock": clock} if clock else {}))
    segs = make_segments(2 * n, np.random.default_rng(0))
    qs = [store.add_query(SegmentPair(segs[2 * i], segs[2 * i + 1]), step=10 * i) for i in range(n)]
    return store, qs


def test_undo_marks_the_answer_and_only_live_answers_count_train_and_export(tmp_path):
    clock = Clock()
    store, qs = _store_with_queries(tmp_path / "p.sqlite", clock=clock)
    with store:
        store.record_answer(Answer(qs[0].query_id, 1, "ann"))
        store.record_answer(Answer(qs[1].query_id, -1, "ann"))
        clock.t += 7
        assert store.undo_last("ann") == qs[1].query_id
        assert store.undone_answer_ids() == {2}
        assert store.count_labels() == 1 and store.count_answers() == 1 and store.stats()["undone"] == 1
        assert [a.query_id for _, a in store.answers_since(0)] == [qs[0].query_id]
        assert [lb.value for lb in store.labels()] == [1]
        # the query takes a new answer (another label, even another labeller's), which gets a new id
        assert store.record_answer(Answer(qs[1].query_id, 0, "bob"))
        assert [(i, a.label, a.labeller) for i, a in store.answers_since(1)] == [(3, 0, "bob")]
        assert [r["answer_id"] for r in store.answer_rows()] == [1, 3]
        history = store.answer_rows(history=True)
        assert [(r["answer_id"], r["label"], r["undone_by"], r["undone_at"]) for r in history] == \
            [(1, 1, None, None), (2, -1, "ann", 5007.0), (3, 0, None, None)]
        assert export_jsonl(store, tmp_path / "live.jsonl") == 2
        assert export_jsonl(store, tmp_path / "all.jsonl", history=True) == 3
        assert export_csv(store, tmp_path / "all.csv", history=True) == 3
        assert "undone_by" in (tmp_path / "all.csv").read_text().splitlines()[0]
        assert "undone_by" not in (tmp_path / "live.jsonl").read_text()
    # a history file imports its live answers only
    other, _ = _store_with_queries(tmp_path / "q.sqlite")
    with other:
        assert import_jsonl(other, tmp_path / "all.jsonl") == 2
        assert sorted(a.label for _, a in other.answers_since(0)) == [0, 1]


def test_labels_export_history_flag(tmp_path, capsys):
    run = tmp_path / "run"
    from rlhf_control.web.demo import make_demo_run

    make_demo_run(run, n_segments=6, n_queries=3, seed=1)
    from rlhf_control import __version__
    from rlhf_control.config import RunConfig, write_config_file

    write_config_file(run / "config.toml", RunConfig(), {}, {"version": __version__})
    with PreferenceStore.open(run / "preferences.sqlite") as store:
        qid = store.pending_queries()[0].query_id
        store.record_answer(Answer(qid, 1, "ann"))
        store.undo_last("ann")
    assert main(["labels", str(run), "--export", str(tmp_path / "h.jsonl"), "--history"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["undone_by"] == "ann"
    assert main(["labels", str(run), "--import", str(tmp_path / "h.jsonl"), "--history"]) == 2
    assert "--history goes with --export" in capsys.readouterr().err


V1_ANSWERS = """CREATE TABLE answers(
  id INTEGER PRIMARY KEY AUTOINCREMENT, query_id INTEGER NOT NULL UNIQUE REFERENCES queries(id),
  label INTEGER CHECK(label IN (-1, 0, 1)), skipped INTEGER NOT NULL CHECK(skipped IN (0, 1)),
  labeller TEXT NOT NULL, answered_at REAL NOT NULL, seconds REAL NOT NULL,
  CHECK((skipped = 1) = (label IS NULL)));
CREATE INDEX answers_labeller ON answers(labeller, id);
CREATE INDEX answers_time ON answers(answered_at);"""


def test_a_version_1_store_is_upgraded_keeping_every_answer_and_id(tmp_path):
    path = tmp_path / "old.sqlite"
    store, qs = _store_with_queries(path)
    store.close()
    con = sqlite3.connect(path, isolation_level=None)  # make it what version 1 wrote
    con.executescript("BEGIN; DROP TABLE answers; " + V1_ANSWERS + " PRAGMA user_version = 1; COMMIT;")
    for i, q in enumerate(qs[:3]):
        con.execute("INSERT INTO answers(query_id, label, skipped, labeller, answered_at, seconds)"
                    " VALUES (?, ?, 0, 'ann', 1.0, 2.0)", (q.query_id, [1, -1, 0][i]))
    con.execute("DELETE FROM answers WHERE id = 3")  # version 1's undo deleted the row
    con.execute("UPDATE queries SET status = 'answered' WHERE id IN (1, 2)")
    con.close()
    with PreferenceStore.open(path) as store:
        assert [(i, a.label) for i, a in store.answers_since(0)] == [(1, 1), (2, -1)]
        assert store.record_answer(Answer(qs[2].query_id, 1, "bob"))
        assert store.last_answer_id() == 4  # id 3 (undone under version 1) is not reused
        store.undo_last("bob")
        assert store.count_labels() == 2
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    con.close()


def test_the_workers_window_follows_labels_taken_out():
    rng = np.random.default_rng(2)
    segs = make_segments(40, rng)
    ds = PreferenceDataset(max_size=100)
    for i in range(20):
        a, b = segs[2 * i], segs[2 * i + 1]
        ds.add(Label(SegmentPair(a, b), int(np.sign(a.true_return - b.true_return)) or 1), seq=10 + i)
    assert ds.remove([12, 15, 99]) == 2 and len(ds) == 18 and ds.removals == 1
    assert ds.remove([12]) == 0 and ds.removals == 1
    with pytest.raises(ValueError):
        ds.add(ds.labels[0], seq=5)  # seqs keep increasing after a removal

    def make():
        ens = RewardEnsemble(EnsembleConfig(n_members=2, hidden=(16,)), (4,), (2,), seed=0)
        ens.set_input_stats(np.concatenate([lb.pair.first.obs for lb in ds.labels]))
        return ens, RewardTrainer(ens, RewardTrainerConfig(seed=0), np.random.default_rng(1))

    there, there_trainer = make()
    worker = RewardWorker(there_trainer.config, window=100)
    try:
        worker.submit(there, there_trainer, ds, epochs=1, norm_segments=segs[:8])
        assert worker.result(there, there_trainer).n_labels == 18
        ds.remove([20, 21, 22])  # answers undone after the child had them
        worker.submit(there, there_trainer, ds, epochs=1, norm_segments=segs[:8])
        assert worker.result(there, there_trainer).n_labels == 15 == len(ds)
    finally:
        worker.close()


def test_an_undone_answer_leaves_the_trainers_window(tmp_path):
    from rlhf_control.config import RunConfig
    from rlhf_control.loop.trainer import RLHFTrainer

    cfg = RunConfig(oracle="human", run_ahead=True, steps=2048, labels=4, pretrain_labels=0, n_envs=1,
                    label_port=0, reward_async=False)
    trainer = RLHFTrainer(cfg, tmp_path / "run")
    try:
        segs = make_segments(6, np.random.default_rng(3), obs_dim=3, act_dim=1)
        qs = [trainer.store.add_query(SegmentPair(segs[2 * i], segs[2 * i + 1]), step=0) for i in range(3)]
        for q, label in zip(qs, (1, -1, 0), strict=True):
            trainer.store.record_answer(Answer(q.query_id, label, "ann"))
        assert trainer._collect() == 3 and len(trainer.dataset) == 3
        trainer.store.undo_last("ann")
        trainer._collect()
        assert [lb.value for lb in trainer.dataset.labels] == [1, -1]
        trainer.store.record_answer(Answer(qs[2].query_id, 1, "ann"))  # answered again: a new label
        assert trainer._collect() == 1 and [lb.value for lb in trainer.dataset.labels] == [1, -1, 1]
    finally:
        trainer.close()
