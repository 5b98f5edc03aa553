"""Sweeps: a grid of RLHF runs plus the RL-on-the-true-reward baseline, on a process pool or on Ray.

A sweep spec is a TOML file::

    [sweep]
    tasks = ["Pendulum-v1", "Hopper-v5"]   # required
    seeds = [0, 1, 2]                      # default [0]
    labels = [350, 700, 1400]              # default: each task's own label budget
    oracles = ["perfect"]                  # oracle specs, e.g. "stochastic:beta=2+mistake"
    selectors = ["variance"]
    ablations = ["full"]                   # names in ABLATIONS
    baseline = true                        # RL on the true reward, once per task and seed
    rlhf = true                            # false: baselines only
    scale = 1.0                            # steps = round(task steps * scale) where steps is not set
    cpus_per_run = 1
    gpus_per_run = 0                       # default: 1 when the run's device is cuda, else 0

    [run]                                  # any RunConfig field except the grid axes, for all runs
    reward_epochs = 1

    [overrides."Hopper-v5"]                # RunConfig fields for one task's runs
    steps = 500000

Each grid point has a run directory named from the point alone (see :func:`point_name`), so
starting a sweep again skips finished runs (``DONE``), resumes half-finished ones from their
checkpoints and starts the rest. Everything a user can get wrong (keys, names, an empty grid, a
run directory of another version or other settings, an unreachable Ray address) is a one-line
``ValueError`` raised before any run starts. A run that fails is reported (``error.txt`` in its
directory) and retried by the next start; the others go on.

Where the runs execute (a process pool or Ray) is :mod:`rlhf_control.experiments.backends`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from rlhf_control import rundir
from rlhf_control.config import RUN_KEYS, RunConfig, run_config_from_dict, run_config_to_dict
from rlhf_control.errors import UserError
from rlhf_control.experiments import backends
from rlhf_control.experiments.backends import ERROR_FILE, POINT_FILE, REGRESSION

AXES = ("task", "seed", "labels", "oracle", "selector")
SWEEP_KEYS = ("tasks", "seeds", "labels", "oracles", "selectors", "ablations", "baseline", "rlhf", "scale",
              "cpus_per_run", "gpus_per_run")
# The paper's ablations (Section 3.3) as RunConfig changes. "no-ensemble" keeps one predictor, so
# queries cannot use ensemble variance and are chosen at random. The regression ablation swaps the
# reward fitter (rlhf_control.reward.fitting), in process and in the reward worker alike.
ABLATIONS: dict[str, dict[str, Any]] = {
    "full": {},
    "random-queries": {"selector": "random"},
    "no-ensemble": {"reward_members": 1, "selector": "random"},
    "no-online-queries": {"schedule": "offline"},
    "no-regularization": {"reward_l2": False},
    "no-segments": {"clip_length": 1},
    REGRESSION: {"reward_fitter": REGRESSION},
}
# Only these fields reach a baseline run (the others are about labels and the reward model); the
# evaluation settings do, so that both kinds of run are measured alike.
BASELINE_FIELDS = ("task", "seed", "steps", "algo", "device", "n_envs", "checkpoint_every", "agent",
                   "eval_every", "eval_episodes", "iteration_steps")
SPEC_FILE = "sweep.toml"  # the spec a sweep output directory was last run with


@dataclass(frozen=True)
class SweepSpec:
    """A grid of runs; see the module docstring for the TOML form."""

    tasks: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    labels: tuple[int, ...] | None = None
    oracles: tuple[str, ...] = ("perfect",)
    selectors: tuple[str, ...] = ("variance",)
    ablations: tuple[str, ...] = ("full",)
    baseline: bool = True
    rlhf: bool = True
    scale: float = 1.0
    cpus_per_run: float = 1.0
    gpus_per_run: float | None = None
    run: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_toml_dict(self) -> dict[str, Any]:
        sweep = {k: list(v) if isinstance(v, tuple) else v for k in SWEEP_KEYS
                 if (v := getattr(self, k)) is not None}
        return {"sweep": sweep, "run": dict(self.run), "overrides": {k: dict(v) for k, v in self.overrides.items()}}


def _seq(value: Any, key: str, kind: type, where: str) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise UserError(f"{key} = {value!r} in {where} must be a list of {kind.__name__}s")
    if not value:
        raise UserError(f"empty grid: {key} in {where} is an empty list")
    return tuple(value)


def _fields(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a table of RunConfig fields, got {data!r}")
    axes = sorted(set(data) & set(AXES))
    if axes:
        raise UserError(f"{', '.join(axes)} in {where} is a grid axis; set it in [sweep] "
                         f"({', '.join(a + 's' if a != 'labels' else a for a in axes)})")
    unknown = sorted(set(data) - set(RUN_KEYS))
    if unknown:
        allowed = [k for k in RUN_KEYS if k not in AXES]
        raise UserError(f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(allowed)}")
    return dict(data)


def spec_from_dict(data: dict[str, Any], where: str = "sweep spec") -> SweepSpec:
    """Check a parsed spec (keys and value types; names are checked by :func:`expand_grid`)."""
    unknown = sorted(set(data) - {"sweep", "run", "overrides"})
    if unknown:
        raise UserError(f"unknown section(s) {', '.join(unknown)} in {where}; allowed: sweep, run, overrides")
    sweep = data.get("sweep")
    if not isinstance(sweep, dict):
        raise UserError(f"{where} has no [sweep] table; it needs at least tasks = [...]")
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise UserError(f"unknown key(s) {', '.join(unknown)} in [sweep] of {where}; allowed: {', '.join(SWEEP_KEYS)}")
    if "tasks" not in sweep:
        raise UserError(f"[sweep] of {where} needs tasks = [...]")
    kw: dict[str, Any] = {"tasks": _seq(sweep["tasks"], "tasks", str, where)}
    for key, kind in (("seeds", int), ("labels", int), ("oracles", str), ("selectors", str), ("ablations", str)):
        if key in sweep:
            kw[key] = _seq(sweep[key], key, kind, where)
    if any(n < 1 for n in kw.get("labels", ())):
        raise UserError(f"labels = {list(kw['labels'])} in {where} must be positive integers")
    for key in ("baseline", "rlhf"):
        if key in sweep:
            if not isinstance(sweep[key], bool):
                raise UserError(f"{key} = {sweep[key]!r} in {where} must be true or false")
            kw[key] = sweep[key]
    for key in ("scale", "cpus_per_run", "gpus_per_run"):
        if key in sweep:
            value = sweep[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
                    key != "gpus_per_run" and value == 0):
                raise UserError(f"{key} = {value!r} in {where} must be a positive number")
            kw[key] = float(value)
    bad = sorted(set(kw.get("ablations", ())) - set(ABLATIONS))
    if bad:
        raise UserError(f"unknown ablation(s) {', '.join(map(repr, bad))} in {where}; known: {', '.join(ABLATIONS)}")
    if not kw.get("baseline", True) and not kw.get("rlhf", True):
        raise UserError(f"empty grid: {where} sets both baseline and rlhf to false")
    kw["run"] = _fields(data.get("run", {}), f"[run] of {where}")
    overrides = data.get("overrides", {})
    if not isinstance(overrides, dict):
        raise UserError(f"[overrides] of {where} must hold one table per task")
    kw["overrides"] = {}
    for task, table in overrides.items():
        if task not in kw["tasks"]:
            raise UserError(f"[overrides.{task!r}] in {where} names a task that is not in tasks = {list(kw['tasks'])}")
        kw["overrides"][task] = _fields(table, f"[overrides.{task!r}] of {where}")
    return SweepSpec(**kw)


def load_spec(path: Path) -> SweepSpec:
    """Read a sweep spec TOML file."""
    return spec_from_dict(rundir.read_toml(path, "sweep spec"), where=str(path))


# ----------------------------------------------------------------------------- the grid
@dataclass(frozen=True)
class GridPoint:
    """One run of a sweep: ``name`` is its directory relative to the sweep's output directory."""

    name: str
    kind: str  # "rlhf" or "baseline"
    cfg: RunConfig
    ablation: str | None
    cpus: float
    gpus: float

    def describe(self) -> dict[str, Any]:
        """What ``point.json`` records (the report groups runs by it)."""
        c = self.cfg
        rlhf = self.kind == "rlhf"
        return {"name": self.name, "kind": self.kind, "task": c.task, "seed": c.seed, "steps": c.steps,
                "labels": c.labels if rlhf else None, "oracle": c.oracle if rlhf else None,
                "selector": c.selector if rlhf else None, "ablation": self.ablation}


def slug(text: str) -> str:
    """``text`` as one path component (runs of other characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._=+,-]+", "_", text).strip("_") or "_"


def point_name(cfg: RunConfig, kind: str, ablation: str | None = None) -> str:
    """Run directory of a grid point: ``<task>/L<labels>-<oracle>-<selector>[-<ablation>]-s<seed>``."""
    if kind == "baseline":
        from rlhf_control.experiments.baseline import BASELINE_MARKER

        return f"{slug(cfg.task)}/{BASELINE_MARKER}-s{cfg.seed}"
    suffix = "" if ablation in (None, "full") else f"-{ablation}"
    return f"{slug(cfg.task)}/L{cfg.labels}-{slug(cfg.oracle)}-{slug(cfg.selector)}{suffix}-s{cfg.seed}"


def _check_names(spec: SweepSpec) -> None:
    """Oracle and selector names; each unknown one is a one-line error naming the known ones."""
    if not spec.rlhf:
        return
    from rlhf_control.oracles import check_spec
    from rlhf_control.queries.selection import SELECTORS

    for oracle in spec.oracles:
        if check_spec(oracle)[0].shows_clips:
            raise UserError(f"oracle {oracle!r} cannot be swept (runs would wait for a person); "
                            "use perfect or a B-Pref teacher (stochastic, mistake, skip, equal, myopic)")
    for selector in spec.selectors:
        SELECTORS.get(selector)


def expand_grid(spec: SweepSpec) -> list[GridPoint]:
    """All runs of a sweep, baselines first per task and seed; checks every name on the way."""
    from rlhf_control.config import resolve
    from rlhf_control.queries.schedule import SCHEDULES
    from rlhf_control.tasks.catalogue import get_task

    tasks = {name: get_task(name) for name in spec.tasks}
    for name, task in tasks.items():
        if not task.has_true_reward:
            raise UserError(f"task {name!r} has no true reward, so it has no synthetic labels or baseline; "
                             "train it with the human oracle instead")
    _check_names(spec)
    points: dict[str, GridPoint] = {}

    def add(cfg: RunConfig, kind: str, ablation: str | None) -> None:
        gpus = spec.gpus_per_run if spec.gpus_per_run is not None else float(cfg.device.startswith("cuda"))
        point = GridPoint(point_name(cfg, kind, ablation), kind, cfg, ablation, spec.cpus_per_run, gpus)
        old = points.get(point.name)
        if old is not None and old != point:
            raise UserError(f"two grid points share run directory {point.name!r}; give them distinct names")
        points[point.name] = point

    for task_name, task in tasks.items():
        base = dict(spec.run)
        base.update(spec.overrides.get(task_name, {}))
        base.setdefault("steps", max(1, int(round(task.total_steps * spec.scale))))
        where = f"sweep point for task {task_name!r}"
        for seed in spec.seeds:
            if spec.baseline:
                fields_ = {k: v for k, v in base.items() if k in BASELINE_FIELDS}
                add(run_config_from_dict(dict(fields_, task=task_name, seed=seed), where), "baseline", None)
            if not spec.rlhf:
                continue
            for labels in spec.labels or (task.label_budget,):
                for oracle in spec.oracles:
                    for selector in spec.selectors:
                        for ablation in spec.ablations:
                            values = dict(base, task=task_name, seed=seed, labels=labels, oracle=oracle,
                                          selector=selector)
                            values.update(ABLATIONS[ablation])
                            cfg = run_config_from_dict(values, where)
                            SCHEDULES.get(resolve(cfg, task).schedule)  # budget, pretraining and schedule checks
                            add(cfg, "rlhf", ablation)
    return list(points.values())


def _comparable(cfg: RunConfig) -> dict[str, Any]:
    # The device may change between attempts (a resumed run can move to another machine).
    d = run_config_to_dict(cfg)
    d.pop("device", None)
    return d


def run_status(point: GridPoint, run_dir: Path) -> str:
    """``done``, ``resume`` or ``new``; raises if the directory holds something else."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return "new"
    if not rundir.is_run_dir(run_dir):
        if {p.name for p in run_dir.iterdir()} <= {POINT_FILE, ERROR_FILE}:
            return "new"  # a run that failed before it wrote its config
        raise UserError(f"{str(run_dir)!r} exists but holds no run (no {rundir.CONFIG_FILE}); "
                         "move it away or use another --out")
    try:
        data = rundir.read_config_doc(run_dir)
    except rundir.RunDirError as exc:
        raise UserError(f"{exc}; move the run away or use another --out") from None
    rundir.check_version(run_dir, data, hint="use another --out (or finish it with that version)")
    meta = data.get("meta", {})
    if (meta.get("baseline") is not None) != (point.kind == "baseline"):
        raise UserError(f"run directory {str(run_dir)!r} holds a {'baseline' if meta.get('baseline') else 'RLHF'} "
                         f"run, but the sweep expects a {point.kind} run there; use another --out")
    try:
        stored = _comparable(run_config_from_dict(data.get("run", {}), str(run_dir / rundir.CONFIG_FILE)))
    except (ValueError, TypeError) as exc:
        raise UserError(f"run directory {str(run_dir)!r} has an unusable config: {exc}") from None
    wanted = _comparable(point.cfg)
    diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
    if diff:
        shown = ", ".join(f"{k}: {stored.get(k)!r} there, {wanted.get(k)!r} here" for k in diff[:3])
        raise UserError(f"run directory {str(run_dir)!r} holds a run with other settings ({shown}); use another --out")
    if rundir.is_done(run_dir):
        return "done"
    if point.kind == "rlhf" and not (run_dir / rundir.STORE_FILE).is_file():
        return "new"  # killed before its label store existed: nothing to keep
    return "resume"


def plan_sweep(spec: SweepSpec, out: Path) -> list[tuple[GridPoint, str]]:
    """Each grid point with its status in ``out`` (all checks, no side effects)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output directory {str(out)!r} is a file")
    return [(p, run_status(p, out / p.name)) for p in expand_grid(spec)]


def format_plan(plan: list[tuple[GridPoint, str]]) -> str:
    """The grid as an aligned table (``--dry-run``)."""
    rows = [("status", "kind", "task", "seed", "steps", "labels", "oracle", "selector", "ablation", "directory")]
    for p, status in plan:
        d = p.describe()
        rows.append((status, p.kind, d["task"], str(d["seed"]), str(d["steps"]), str(d["labels"] or "-"),
                     d["oracle"] or "-", d["selector"] or "-", d["ablation"] or "-", p.name))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    todo = [(p, s) for p, s in plan if s != "done"]
    lines.append(f"{len(plan)} runs ({len(plan) - len(todo)} done, {len(todo)} to run, "
                 f"{sum(p.cfg.steps or 0 for p, _ in todo):,} agent steps to go)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- running
@dataclass
class SweepResult:
    """What a sweep did: run directory names per outcome, and each failure's one-line error."""

    out: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def run_sweep(spec: SweepSpec, out: Path, backend: str = "local", address: str | None = None,
              workers: int | None = None, log: Callable[[str], None] = print) -> SweepResult:
    """Run every grid point not yet finished in ``out``; a failed run does not stop the others."""
    if backend not in ("local", "ray"):
        raise UserError(f"backend {backend!r} is not allowed; use local or ray")
    if address is not None and backend != "ray":
        raise UserError(f"--address {address!r} needs --backend ray")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UserError(f"workers {workers!r} must be a positive integer")
    out = Path(out).resolve()
    plan = plan_sweep(spec, out)
    result = SweepResult(out=out, skipped=[p.name for p, s in plan if s == "done"])
    # Longest runs first: the pool then ends with short runs instead of one long straggler.
    todo = sorted(((p, s) for p, s in plan if s != "done"), key=lambda ps: -(ps[0].cfg.steps or 0))
    started_ray = backends.connect_ray(address, workers) if backend == "ray" and todo else False
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_atomic(out / SPEC_FILE, tomli_w.dumps(spec.to_toml_dict()))
    payloads = [{"name": p.name, "kind": p.kind, "ablation": p.ablation, "cfg": run_config_to_dict(p.cfg),
                 "point": p.describe(), "run_dir": str(out / p.name), "resume": s == "resume",
                 "cpus": p.cpus, "gpus": p.gpus, "ship_files": backend == "ray"} for p, s in todo]
    log(f"sweep: {len(plan)} runs, {len(result.skipped)} already done, {len(todo)} to run on {backend} -> {out}")
    t0 = time.time()

    def on_result(res: dict[str, Any]) -> None:
        backends.sync_files(out, res)
        n = len(result.ran) + len(result.failed) + 1
        if res["status"] == "ok":
            result.ran.append(res["name"])
            log(f"[{n}/{len(todo)}] done   {res['name']} ({res['seconds']:.0f} s)")
        else:
            result.failed[res["name"]] = res["error"]
            log(f"[{n}/{len(todo)}] FAILED {res['name']}: {res['error']}")

    try:
        if backend == "local":
            backends.run_local(payloads, workers, on_result)
        else:
            backends.run_ray(payloads, workers, on_result)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    log(f"sweep: {len(result.ran)} ran, {len(result.skipped)} skipped, {len(result.failed)} failed "
        f"in {time.time() - t0:.0f} s")
    return result

