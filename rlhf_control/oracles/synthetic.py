"""Synthetic oracles: the perfect teacher and B-Pref's scripted teachers (Lee et al. 2021).

A :class:`ScriptedTeacher` reads each segment's true reward ``(T,)`` and answers a pair in B-Pref's
order (``get_label`` in rail-berkeley/BPref's ``reward_model.py``):

1. skip: with threshold ``s = eps_skip * margin > 0``, skip (label None) when both undiscounted
   returns are <= s ("both clips are bad");
2. equal: note whether the undiscounted returns differ by less than ``e = eps_equal * |margin|``;
3. myopic: weight step t of a T-step segment by ``gamma ** (T - 1 - t)`` (later steps count more);
4. rational / stochastic: +1 or -1 by the sign of the weighted difference (0 on an exact tie), or,
   with a finite ``beta``, +1 with probability sigmoid(beta * (D1 - D2)) (Bradley-Terry);
5. mistake: flip the answer with probability ``eps_mistake``;
6. equal: answer 0 where step 2 said so (overrides 3-5).

Threshold scale (``margin``). B-Pref scales both thresholds by the average true return of a
segment-length slice of the recent episodes (the mean return of the last 10 training episodes times
segment / episode length). Here ``margin`` is either fixed (the teacher's ``margin`` field, spec
``skip:margin=5``, or ``SyntheticOracle.set_margin``) or, when None, the mean true return of the
clips of the agent's recent behaviour, which the loop hands over before each round
(:meth:`SyntheticOracle.observe_behaviour`: the clips the round's pairs are drawn from, all of them,
not only the selected ones). An oracle never told that (used outside the loop) falls back to a
running mean over the last ``margin_window`` segments it has been asked about (each segment of a
submitted batch counted once, the batch itself included, before answering it). The skip threshold
uses the signed mean return; the equal threshold uses the mean absolute return, so it is a scale on
any task. As in B-Pref, skipping needs a positive threshold: on a task whose mean segment return is
<= 0 the skip teacher never skips.

Randomness: two uniforms per query (Bradley-Terry draw, mistake draw) from one generator seeded
at construction, drawn for every query whatever the settings, so answers are a function of the
seed and the queries submitted so far.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from rlhf_control.errors import UserError
from rlhf_control.oracles.base import ORACLES, OracleContext, SpecTerm, parse_spec
from rlhf_control.types import Answer, Query, Segment


@dataclass(frozen=True)
class ScriptedTeacher:
    """All the scripted-teacher knobs in one config; presets set one or more of them.

    ``beta``: Bradley-Terry rationality (None or inf = perfectly rational; 0 = coin flip);
    ``gamma``: myopic discount in [0, 1] (1 = not myopic); ``eps_mistake``: flip probability;
    ``eps_skip`` / ``eps_equal``: threshold factors in [0, 1] on the margin; ``margin``: fixed
    threshold scale in units of segment return, or None for the oracle's running mean.
    """

    beta: float | None = None
    gamma: float = 1.0
    eps_mistake: float = 0.0
    eps_skip: float = 0.0
    eps_equal: float = 0.0
    margin: float | None = None

    def __post_init__(self) -> None:
        if self.beta is not None and not (self.beta >= 0):
            raise UserError(
                f"teacher beta={self.beta} is not allowed; use a number >= 0 (inf = perfectly rational)"
            )
        for name in ("gamma", "eps_mistake", "eps_skip", "eps_equal"):
            value = getattr(self, name)
            if not (0.0 <= value <= 1.0):
                raise UserError(f"teacher {name}={value} is not allowed; use a number in [0, 1]")
        if self.margin is not None and not math.isfinite(self.margin):
            raise UserError(f"teacher margin={self.margin} is not allowed; use a finite number or None")

    @property
    def rational(self) -> bool:
        return self.beta is None or math.isinf(self.beta)

    def label(
        self,
        first: np.ndarray,
        second: np.ndarray,
        u_beta: float,
        u_mistake: float,
        skip_threshold: float = 0.0,
        equal_threshold: float = 0.0,
    ) -> int | None:
        """Answer one pair from true rewards ``first, second: (T,)``; ``u_*`` are uniforms in [0, 1).

        Returns +1 (first better), -1 (second better), 0 (equal) or None (skipped).
        """
        r1, r2 = float(first.sum()), float(second.sum())
        if skip_threshold > 0 and max(r1, r2) <= skip_threshold:
            return None
        equal = abs(r1 - r2) < equal_threshold
        if self.gamma != 1.0:
            weights = self.gamma ** np.arange(len(first) - 1, -1, -1, dtype=np.float64)
            d1, d2 = float(first @ weights), float(second @ weights)
        else:
            d1, d2 = r1, r2
        if self.rational:
            answer = int(np.sign(d1 - d2))
        else:
            z = float(self.beta) * (d1 - d2)
            p_first = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
            answer = 1 if u_beta < p_first else -1
        if u_mistake < self.eps_mistake:
            answer = -answer
        return 0 if equal else answer


# --- presets and spec parsing ---------------------------------------------------------------


@dataclass(frozen=True)
class TeacherPreset:
    """A named teacher: the fields it sets, and the spec keys it accepts mapped to fields."""

    defaults: dict[str, float] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)


# B-Pref's defaults: beta=1, epsilon=0.1 (mistake, skip, equal), gamma=0.9.
TEACHER_PRESETS: dict[str, TeacherPreset] = {}

_KEY_RANGES = {
    "beta": "a number >= 0 (inf = perfectly rational)",
    "gamma": "a number in [0, 1]",
    "eps_mistake": "a number in [0, 1]",
    "eps_skip": "a number in [0, 1]",
    "eps_equal": "a number in [0, 1]",
    "margin": "a finite number (threshold scale, in units of segment return)",
}


def register_teacher_preset(name: str, defaults: dict[str, float], keys: dict[str, str]) -> None:
    """Add a scripted-teacher preset usable in oracle specs (``name`` and ``name:key=value``)."""
    teacher_fields = {f.name for f in fields(ScriptedTeacher)}
    unknown = (set(defaults) | set(keys.values())) - teacher_fields
    if unknown:
        raise UserError(
            f"teacher preset {name!r}: unknown fields {sorted(unknown)}; known: {sorted(teacher_fields)}"
        )
    ScriptedTeacher(**defaults)  # validate the defaults now, not at first use
    TEACHER_PRESETS[name] = TeacherPreset(dict(defaults), dict(keys))
    ORACLES.register(name)(_TEACHERS)


def _parse_value(spec_name: str, key: str, value: str, target: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise UserError(
            f"teacher {spec_name!r}: {key}={value!r} is not a number; use {_KEY_RANGES[target]}"
        ) from None
    try:
        ScriptedTeacher(**{target: number})
    except ValueError:
        raise UserError(
            f"teacher {spec_name!r}: {key}={value} is out of range; use {_KEY_RANGES[target]}"
        ) from None
    return number


def teacher_from_terms(terms: Sequence[SpecTerm]) -> ScriptedTeacher:
    """Combine teacher presets (with their ``key=value`` overrides) into one ScriptedTeacher."""
    settings: dict[str, float] = {}
    origin: dict[str, str] = {}
    for term in terms:
        preset = TEACHER_PRESETS.get(term.name)
        if preset is None:
            raise UserError(
                f"{term.name!r} is not a scripted teacher; known: {', '.join(sorted(TEACHER_PRESETS))}"
            )
        values = dict(preset.defaults)
        for key, raw in term.params:
            if key not in preset.keys:
                allowed = ", ".join(sorted(preset.keys)) or "none"
                raise UserError(f"teacher {term.name!r} has no option {key!r}; allowed: {allowed}")
            target = preset.keys[key]
            values[target] = _parse_value(term.name, key, raw, target)
        for target, value in values.items():
            if target in settings and settings[target] != value:
                raise UserError(
                    f"teachers {origin[target]!r} and {term.name!r} set {target} to {settings[target]} and {value}; "
                    "give one value"
                )
            settings[target], origin[target] = value, term.name
    return ScriptedTeacher(**settings)


def teacher_from_spec(spec: str) -> ScriptedTeacher:
    """``teacher_from_spec("stochastic:beta=2+mistake")`` -> ScriptedTeacher(beta=2.0, eps_mistake=0.1)."""
    return teacher_from_terms(parse_spec(spec))


# --- the oracle ---------------------------------------------------------------------------------


class SyntheticOracle:
    """Queue-shaped oracle answering at once with a :class:`ScriptedTeacher`.

    ``submit`` answers immediately; ``collect`` hands the answers over (in submission order) and
    clears them; ``pending`` counts answers not yet collected. ``labeller`` tags every Answer.
    """

    def __init__(
        self, teacher: ScriptedTeacher, seed: int, labeller: str = "synthetic", margin_window: int = 1000
    ):
        if margin_window < 1:
            raise ValueError(f"margin_window={margin_window} is not allowed; use an integer >= 1")
        self.teacher = teacher
        self.labeller = labeller
        self._rng = np.random.default_rng(seed)
        self._recent_returns: deque[float] = deque(maxlen=int(margin_window))
        self._behaviour: tuple[float, float] | None = None  # (mean, mean absolute) recent clip return
        self._ready: list[Answer] = []

    @property
    def pending(self) -> int:
        return len(self._ready)

    @property
    def margin(self) -> float:
        """Threshold scale now: the teacher's fixed margin, else the mean return of the agent's recent
        clips (:meth:`observe_behaviour`), else the running mean segment return (0 if none seen)."""
        if self.teacher.margin is not None:
            return self.teacher.margin
        if self._behaviour is not None:
            return self._behaviour[0]
        return float(np.mean(self._recent_returns)) if self._recent_returns else 0.0

    def _abs_margin(self) -> float:
        if self.teacher.margin is not None:
            return abs(self.teacher.margin)
        if self._behaviour is not None:
            return self._behaviour[1]
        return float(np.mean(np.abs(self._recent_returns))) if self._recent_returns else 0.0

    def observe_behaviour(self, returns: Sequence[float]) -> None:
        """The true returns of the agent's recent clips, which scale the thresholds of the next rounds
        (B-Pref's margin); an empty sequence changes nothing."""
        r = np.asarray(returns, dtype=np.float64)
        if r.size:
            self._behaviour = (float(r.mean()), float(np.abs(r).mean()))

    def set_margin(self, margin: float | None) -> None:
        """Fix the threshold scale (segment-return units), or None to go back to the running mean."""
        self.teacher = replace(self.teacher, margin=None if margin is None else float(margin))

    def submit(self, queries: Sequence[Query]) -> None:
        """Answer ``queries`` now; raises UserError (and answers none) if a segment lacks true rewards."""
        queries = list(queries)
        ids = [q.query_id for q in queries]
        taken = {a.query_id for a in self._ready}
        if len(set(ids)) != len(ids) or taken.intersection(ids):
            raise ValueError("query ids must be unique among the submitted and not yet collected queries")
        seen: dict[int, float] = {}
        for q in queries:
            for seg in (q.pair.first, q.pair.second):
                if seg.true_rewards is None:
                    raise UserError(
                        f"query {q.query_id}: segment (episode {seg.episode_id}, step {seg.start_step}) has no "
                        "true rewards; a synthetic oracle needs them (use a human oracle for tasks without one)"
                    )
                seen.setdefault(id(seg), seg.true_return)
        self._recent_returns.extend(seen.values())
        skip_thr = self.teacher.eps_skip * self.margin
        equal_thr = self.teacher.eps_equal * self._abs_margin()
        draws = self._rng.random((len(queries), 2))
        for q, (u_beta, u_mistake) in zip(queries, draws, strict=True):
            label = self.teacher.label(
                _rewards(q.pair.first), _rewards(q.pair.second), u_beta, u_mistake, skip_thr, equal_thr
            )
            self._ready.append(Answer(q.query_id, label, labeller=self.labeller))

    def collect(self) -> list[Answer]:
        answers, self._ready = self._ready, []
        return answers

    def resume(self, pending: Sequence[Query]) -> None:
        """Answer the queries a stopped run left unanswered (its answers were lost with the process)."""
        self.submit(pending)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (generator, running returns, margin) for resuming a run exactly."""
        return {
            "rng": self._rng.bit_generator.state,
            "recent_returns": list(self._recent_returns),
            "behaviour": None if self._behaviour is None else list(self._behaviour),
            "margin": self.teacher.margin,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._recent_returns.clear()
        self._recent_returns.extend(float(r) for r in state["recent_returns"])
        behaviour = state.get("behaviour")  # absent in checkpoints before 2026-12-07
        self._behaviour = None if behaviour is None else (float(behaviour[0]), float(behaviour[1]))
        self.set_margin(state["margin"])


def _rewards(seg: Segment) -> np.ndarray:
    assert seg.true_rewards is not None  # checked in submit
    return seg.true_rewards


class _TeacherFactory:
    """Every scripted-teacher name builds a SyntheticOracle; ``+`` combines them into one teacher."""

    shows_clips = False
    needs_true_reward = True

    def check(self, terms: list[SpecTerm]) -> None:
        teacher_from_terms(terms)

    def build(self, terms: list[SpecTerm], seed: int, context: OracleContext) -> SyntheticOracle:
        teacher = teacher_from_terms(terms)
        return SyntheticOracle(teacher, seed, labeller="synthetic:" + "+".join(str(t) for t in terms))


_TEACHERS = _TeacherFactory()


register_teacher_preset("perfect", {}, {})
register_teacher_preset("stochastic", {"beta": 1.0}, {"beta": "beta"})
register_teacher_preset("mistake", {"eps_mistake": 0.1}, {"epsilon": "eps_mistake"})
register_teacher_preset("skip", {"eps_skip": 0.1}, {"epsilon": "eps_skip", "margin": "margin"})
register_teacher_preset("equal", {"eps_equal": 0.1}, {"epsilon": "eps_equal", "margin": "margin"})
register_teacher_preset("myopic", {"gamma": 0.9}, {"gamma": "gamma"})
