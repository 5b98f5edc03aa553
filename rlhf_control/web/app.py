"""The labelling app's logic, independent of HTTP: claims, answers, undo, stats, instructions, clips.

Every method takes already-decoded request values and either returns a JSON-ready dict or raises
:class:`ApiError` (an HTTP status and a one-line message) with the store unchanged. Label
convention as everywhere: ``1`` first (left) better, ``-1`` second (right) better, ``0`` equal,
``None`` can't tell (stored as skipped).

Only queries whose two clips are rendered and lie inside the run's ``clips/`` folder are handed
out, the newest first. A page holds the pair on screen and, when enough are free, one in reserve; it
renews its holds with a heartbeat (``lease_s``, 30 s, after the last one they are free again).
The run's trainer tells the app what it is doing (:meth:`LabelApp.set_run`: training, waiting for
the labeller, finished), which the page shows. ``PreferenceStore.claim_next`` cannot filter on clips, so the app excludes the pending
queries it knows to lack them (a scan of the pending queries at most every ``scan_every_s``) and
gives back, with ``release``, any claim that turns out to have none (a query added since the scan).
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rlhf_control.rundir import (
    CLIPS_DIR,
    CONFIG_FILE,
    INSTRUCTIONS_FILE,
    METRICS_FILE,
    RunDirError,
    read_config_doc,
    write_atomic,
)
from rlhf_control.store.errors import AlreadyAnsweredError, QueryRetiredError, UnknownQueryError
from rlhf_control.store.store import PreferenceStore, QueryRecord
from rlhf_control.types import Answer

CLIP_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".webm": "video/webm"}
MAX_INSTRUCTIONS = 20_000
MAX_EXCLUDE = 100
MAX_NAME = 64
MAX_HELD = 10  # ids a heartbeat may name
MAX_CURVE = 200  # points of the progress curve
RUN_STATES = ("starting", "pretraining", "training", "waiting", "finished", "stopped")
DEFAULT_INSTRUCTIONS = (
    "Watch both clips. Pick the one where the agent does the task better. "
    "If both are about as good, choose 'equally good'; if you cannot judge (nothing happens, the clips "
    "are unclear), choose 'can't tell'."
)
_LABEL_HELP = "use 1 (first better), -1 (second better), 0 (equally good) or null (can't tell)"


class ApiError(Exception):
    """A request the app refuses: ``status`` (4xx/5xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message


def check_labeller(value: Any) -> str:
    """A labeller name: a non-empty string of at most 64 printable characters (surrounding spaces dropped)."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, f"labeller {value!r} is not allowed; give your name as a non-empty string")
    name = value.strip()
    if len(name) > MAX_NAME or not name.isprintable():
        raise ApiError(400, f"labeller {name[:80]!r} is not allowed; use at most {MAX_NAME} printable characters")
    return name


def _int_field(body: dict[str, Any], key: str) -> int:
    if key not in body:
        raise ApiError(400, f"missing {key!r}; give the integer id of the query")
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"{key} {value!r} is not allowed; use an integer")
    return value


def parse_exclude(text: str | None) -> list[int]:
    """``"3,7,9"`` -> ``[3, 7, 9]`` (at most 100 ids); ApiError 400 otherwise."""
    if not text:
        return []
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) > MAX_EXCLUDE or not all(p.isdigit() for p in parts):
        raise ApiError(400, f"exclude={text[:80]!r} is not allowed; use up to {MAX_EXCLUDE} query ids like 3,7,9")
    return [int(p) for p in parts]


def parse_flag(text: str | None, name: str) -> bool:
    """A query-string switch: absent, ``0``/``false`` or ``1``/``true``; ApiError 400 otherwise."""
    if text is None or text.lower() in ("", "0", "false"):
        return False
    if text.lower() in ("1", "true"):
        return True
    raise ApiError(400, f"{name}={text[:40]!r} is not allowed; use 1 or 0")


def run_identity(run_dir: Path) -> str:
    """A short id of the run: its folder and its config's creation time, so the same for every server
    of it and apart from any other run, one made later in the same folder included. Pages tag the
    answers they keep and the clips they fetch with it."""
    try:
        meta = read_config_doc(run_dir).get("meta", {})
        created = str(meta.get("created", "")) if isinstance(meta, dict) else ""
    except (OSError, RunDirError):
        created = ""
    return hashlib.sha1(f"{run_dir}|{created}".encode()).hexdigest()[:12]


def _config_numbers(run_dir: Path) -> tuple[int | None, float | None]:
    """The run's label budget ([run] labels, else [task] label_budget) and clip frame rate ([task] fps)
    from its config.toml; None for what is missing."""
    try:
        doc = read_config_doc(run_dir)
    except (OSError, RunDirError):
        return None, None

    def get(section: str, key: str, kind: type) -> Any:
        value = doc.get(section, {}).get(key) if isinstance(doc.get(section), dict) else None
        return value if isinstance(value, kind) and not isinstance(value, bool) and value > 0 else None

    budget = get("run", "labels", int) or get("task", "label_budget", int)
    fps = get("task", "fps", (int, float))
    return budget, (float(fps) if fps else None)


def _read_config_instructions(run_dir: Path) -> tuple[str | None, str | None]:
    """(instructions, task name) from the run's config.toml; (None, None) when absent or unreadable."""
    try:
        doc = read_config_doc(run_dir)
    except (OSError, RunDirError):
        return None, None
    task = doc.get("task") if isinstance(doc.get("task"), dict) else {}
    run = doc.get("run") if isinstance(doc.get("run"), dict) else {}
    text = task.get("instructions")
    name = task.get("name") or run.get("task")
    return (text if isinstance(text, str) and text.strip() else None), (name if isinstance(name, str) else None)


class LabelApp:
    """What the web server does with a run's store (thread-safe; one instance per server).

    ``run_dir``: the run directory (relative clip paths are relative to it); ``clips_dir``: the only
    folder clips are served from (default ``run_dir/clips``); ``instructions``: shown when the run dir
    has no ``instructions.md`` (otherwise config.toml's ``[task] instructions``, then a default);
    ``lease_s``: how long a claimed query stays held for one labeller (seconds).
    """

    def __init__(self, store: PreferenceStore, run_dir: str | os.PathLike, clips_dir: str | os.PathLike | None = None,
                 instructions: str | None = None, lease_s: float = 30.0, scan_every_s: float = 2.0) -> None:
        if not (math.isfinite(lease_s) and lease_s > 0):
            raise ValueError(f"lease_s={lease_s!r} is not allowed; use a number of seconds > 0")
        self.store = store
        self.run_dir = Path(run_dir).resolve()
        self.clips_dir = (Path(clips_dir) if clips_dir is not None else self.run_dir / CLIPS_DIR).resolve()
        self.lease_s = float(lease_s)
        self._instructions = instructions
        self.scan_every_s = scan_every_s  # public: tests set 0 to rescan on every claim
        self._lock = threading.Lock()
        self._noclip: set[int] = set()
        self._scanned_at = -math.inf
        # What the run is doing; without a trainer (``rlhf-control label``) the run is stopped.
        budget, self.fps = _config_numbers(self.run_dir)
        self.run_id = run_identity(self.run_dir)
        self._run: dict[str, Any] = {"state": "stopped", "budget": budget}

    def set_run(self, **info: Any) -> None:
        """Update what the page shows of the run: ``state`` (one of RUN_STATES), ``step``, ``steps``,
        ``budget`` (the run's labels), ``wanted`` (labels the schedule wants by now),
        ``trained_answer_id`` (the last answer the reward model has trained on)."""
        if "state" in info and info["state"] not in RUN_STATES:
            raise ValueError(f"state {info['state']!r} is not allowed; use one of {', '.join(RUN_STATES)}")
        with self._lock:
            self._run.update(info)

    # ---- clips -------------------------------------------------------------------------------
    def clip_url(self, path: str | None) -> str | None:
        """``/clips/...`` URL of a recorded clip path, or None if it is missing or outside clips_dir."""
        if not path:
            return None
        p = Path(path)
        p = (p if p.is_absolute() else self.run_dir / p).resolve()
        if p.suffix.lower() not in CLIP_TYPES or not p.is_relative_to(self.clips_dir) or not p.is_file():
            return None
        # The run's id in the URL: a browser's cache must not hand one run's query_7 clip to another run.
        return "/clips/" + quote(p.relative_to(self.clips_dir).as_posix()) + f"?run={self.run_id}"

    def clip_file(self, rel: str) -> Path:
        """The file a ``/clips/<rel>`` URL (already %-decoded) names; ApiError 404 unless it is a clip
        file inside clips_dir (no ``..``, no absolute paths, no symlinks leading out)."""
        parts = rel.split("/")
        if "\x00" in rel or "\\" in rel or any(p in ("", ".", "..") for p in parts):
            raise ApiError(404, f"no clip {rel[:80]!r}")
        p = self.clips_dir.joinpath(*parts).resolve()
        if not p.is_relative_to(self.clips_dir) or p.suffix.lower() not in CLIP_TYPES or not p.is_file():
            raise ApiError(404, f"no clip {rel[:80]!r}")
        return p

    def _payload(self, rec: QueryRecord) -> dict[str, Any] | None:
        first, second = self.clip_url(rec.clip_first), self.clip_url(rec.clip_second)
        if first is None or second is None:
            return None
        steps = self.store.agent_steps([rec.first_id, rec.second_id])
        return {"query_id": rec.query_id, "first": first, "second": second, "pair": self.clip_url(rec.clip_pair),
                "created_step": rec.created_step, "first_step": steps.get(rec.first_id, -1),
                "second_step": steps.get(rec.second_id, -1),
                "lease_until": rec.lease_until, "lease_s": self.lease_s, "fps": self.fps, "run": self.run_id}

    def _without_clips(self) -> set[int]:
        """Pending queries known to lack servable clips (rescanned at most every scan_every_s)."""
        with self._lock:
            if time.monotonic() - self._scanned_at >= self.scan_every_s:
                self._noclip = {r.query_id for r in self.store.pending_queries()
                                if self.clip_url(r.clip_first) is None or self.clip_url(r.clip_second) is None}
                self._scanned_at = time.monotonic()
            return set(self._noclip)

    # ---- API ---------------------------------------------------------------------------------
    def _free_ready(self, exclude: set[int]) -> int:
        """Pending queries with clips that nobody holds, outside ``exclude``."""
        noclip = self._without_clips()
        return sum(1 for qid, _, _, holder in self.store.pending_overview()
                   if holder is None and qid not in noclip and qid not in exclude)

    def next_query(self, labeller: Any, exclude: Sequence[int] = (), reserve: bool = False) -> dict[str, Any] | None:
        """Claim the next query with clips for ``labeller`` (their own held one first, then the newest
        free one), or None. ``reserve``: a pair to preload behind the one on screen, only handed out
        while at least one more stays free for other labellers."""
        name = check_labeller(labeller)
        skip = set(exclude) | self._without_clips()
        if reserve and self._free_ready(set(exclude)) < 2:
            return None
        for _ in range(50):
            rec = self.store.claim_next(name, lease_s=self.lease_s, exclude=sorted(skip), newest_first=True)
            if rec is None:
                return None
            payload = self._payload(rec)
            if payload is not None:
                return payload
            # Added after the last scan and not rendered yet: hand it back and look further.
            self.store.release(rec.query_id, name)
            skip.add(rec.query_id)
            with self._lock:
                self._noclip.add(rec.query_id)
        return None

    def answer(self, body: Any) -> dict[str, Any]:
        """Record ``{query_id, label, labeller, seconds}``; ``stored`` False if that same answer was already there."""
        if not isinstance(body, dict):
            raise ApiError(400, f"expected a JSON object {{query_id, label, labeller, seconds}}, got {type(body).__name__}")
        qid = _int_field(body, "query_id")
        if "label" not in body:
            raise ApiError(400, f"missing 'label'; {_LABEL_HELP}")
        label = body["label"]
        if label is not None and (isinstance(label, bool) or not isinstance(label, int) or label not in (-1, 0, 1)):
            raise ApiError(400, f"label {label!r} is not allowed; {_LABEL_HELP}")
        name = check_labeller(body.get("labeller"))
        if self._other_run(body):  # a page's kept answer (or pair on screen), sent to the next run's server
            raise ApiError(409, f"answer to pair {qid} was given in run {str(body['run'])[:20]!r}; this server "
                                f"labels run {self.run_id!r}, so it is not stored")
        seconds = body.get("seconds", 0.0)
        if seconds is None:
            seconds = 0.0
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
                or seconds < 0:
            raise ApiError(400, f"seconds {seconds!r} is not allowed; use a finite number >= 0")
        try:
            stored = self.store.record_answer(Answer(qid, label, name, float(seconds)))
        except UnknownQueryError as exc:
            raise ApiError(404, str(exc)) from None
        except AlreadyAnsweredError as exc:
            raise ApiError(409, str(exc)) from None
        except QueryRetiredError as exc:
            raise ApiError(410, str(exc)) from None
        return {"stored": stored, "query_id": qid}

    def undo(self, body: Any) -> dict[str, Any]:
        """Delete ``labeller``'s last answer; its query comes back held by them (``query`` is its payload).
        With ``query_id`` (the page's own last answer), only if that is their last answer (409 otherwise)."""
        if not isinstance(body, dict):
            raise ApiError(400, f"expected a JSON object {{labeller}}, got {type(body).__name__}")
        name = check_labeller(body.get("labeller"))
        expect = _int_field(body, "query_id") if body.get("query_id") is not None else None
        try:
            undone = self.store.undo_last_answer(name, lease_s=self.lease_s, query_id=expect)
        except AlreadyAnsweredError as exc:
            raise ApiError(409, str(exc)) from None
        if undone is None:
            return {"query_id": None, "query": None, "trained": False}
        answer_id, qid = undone
        # Whether the reward model had already trained on the answer (the run's trainer says up to
        # which answer it has): its weights keep some of it, though the next updates leave it out.
        with self._lock:
            trained = answer_id <= int(self._run.get("trained_answer_id") or 0)
        return {"query_id": qid, "query": self._payload(self.store.get_query(qid)), "trained": trained}

    def _other_run(self, body: dict[str, Any]) -> bool:
        """Whether ``body['run']`` names another run (a page's pair from the run served here before)."""
        return body.get("run") not in (None, self.run_id)

    def release(self, body: Any) -> dict[str, Any]:
        """Give back a query ``labeller`` holds (e.g. a preloaded pair they will not label)."""
        if not isinstance(body, dict):
            raise ApiError(400, f"expected a JSON object {{query_id, labeller}}, got {type(body).__name__}")
        qid = _int_field(body, "query_id")
        name = check_labeller(body.get("labeller"))
        return {"released": not self._other_run(body) and self.store.release(qid, name)}

    def heartbeat(self, body: Any) -> dict[str, Any]:
        """``{labeller, query_ids}``: renew the labeller's hold on the pairs their page shows (taking a
        free one back, e.g. after the page was hidden); ``held`` lists those they hold now."""
        if not isinstance(body, dict):
            raise ApiError(400, f"expected a JSON object {{labeller, query_ids}}, got {type(body).__name__}")
        name = check_labeller(body.get("labeller"))
        ids = body.get("query_ids")
        if not isinstance(ids, list) or len(ids) > MAX_HELD or \
                any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise ApiError(400, f"query_ids {str(ids)[:80]} is not allowed; use a list of at most {MAX_HELD} query ids")
        if self._other_run(body):  # pairs of another run: hold none of this run's pairs of those numbers
            return {"held": [], "lease_s": self.lease_s}
        return {"held": self.store.hold(name, ids, lease_s=self.lease_s), "lease_s": self.lease_s}

    def stats(self, labeller: Any = None) -> dict[str, Any]:
        """Store counts; pending split into ``ready`` (free, with clips), ``rendering`` (clips not ready)
        and held (``held_by_you`` with a ``labeller``, ``held_by_others``); the label ``budget`` and
        what the run is doing (``run``)."""
        name = None if labeller is None else check_labeller(labeller)
        out: dict[str, Any] = dict(self.store.stats())
        noclip = self._without_clips()
        overview = self.store.pending_overview()
        out["waiting_for_clips"] = out["rendering"] = sum(1 for qid, *_ in overview if qid in noclip)
        out["ready"] = sum(1 for qid, _, _, holder in overview if holder is None and qid not in noclip)
        out["held_by_you"] = sum(1 for *_, holder in overview if holder is not None and holder == name)
        out["held_by_others"] = sum(1 for *_, holder in overview if holder is not None and holder != name)
        with self._lock:
            out["run"] = dict(self._run)
        out["budget"] = out["run"].get("budget")
        out["run_id"] = self.run_id
        return out

    def progress(self) -> dict[str, Any]:
        """The run's curve so far, from metrics.csv: ``rows`` of ``[step, labels, learned_return]`` (the
        return null where not measured), at most ``MAX_CURVE`` of them, evenly spread."""
        rows: list[list[Any]] = []
        try:
            with open(self.run_dir / METRICS_FILE, newline="") as f:
                for r in csv.DictReader(f):
                    try:
                        ret = float(r["learned_return"]) if r.get("learned_return") else None
                        rows.append([int(float(r["step"])), int(float(r["labels"])),
                                     ret if ret is not None and math.isfinite(ret) else None])
                    except (KeyError, TypeError, ValueError):
                        continue  # a row being written, or another version's
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ApiError(500, f"cannot read {METRICS_FILE}: {exc}") from None
        if len(rows) > MAX_CURVE:
            rows = [rows[round(i * (len(rows) - 1) / (MAX_CURVE - 1))] for i in range(MAX_CURVE)]
        return {"rows": rows}

    def task(self) -> dict[str, Any]:
        """The instructions shown to labellers and where they came from."""
        path = self.run_dir / INSTRUCTIONS_FILE
        try:
            return {"instructions": path.read_text(encoding="utf-8"), "source": INSTRUCTIONS_FILE,
                    "task": _read_config_instructions(self.run_dir)[1]}
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as exc:
            raise ApiError(500, f"cannot read {path}: {exc}") from None
        text, name = _read_config_instructions(self.run_dir)
        if self._instructions:
            return {"instructions": self._instructions, "source": "server", "task": name}
        if text:
            return {"instructions": text, "source": CONFIG_FILE, "task": name}
        return {"instructions": DEFAULT_INSTRUCTIONS, "source": "default", "task": name}

    def set_task(self, body: Any) -> dict[str, Any]:
        """Save ``{instructions}`` to the run dir's instructions.md (atomically)."""
        if not isinstance(body, dict) or not isinstance(body.get("instructions"), str):
            raise ApiError(400, "expected a JSON object {instructions: text}")
        text = body["instructions"]
        if len(text) > MAX_INSTRUCTIONS:
            raise ApiError(413, f"instructions of {len(text)} characters are too long; the limit is {MAX_INSTRUCTIONS}")
        path = self.run_dir / INSTRUCTIONS_FILE
        try:
            write_atomic(path, text)
        except OSError as exc:
            raise ApiError(500, f"cannot write {path}: {exc}") from None
        return self.task()
