"""Oracles: whoever answers queries (a synthetic teacher reading the true reward, or a person).

An oracle is queue-shaped: the loop ``submit``s queries, later ``collect``s the answers that have
arrived, and never blocks on it. ``make_oracle(spec, seed, context)`` builds one from a spec string:

    spec   := term ("+" term)*            e.g. "mistake+myopic"
    term   := name [":" key "=" value ("," key "=" value)*]
                                          e.g. "stochastic:beta=2+mistake:epsilon=0.2"

Names come from the ``ORACLES`` registry, which holds an :class:`OracleFactory` per name. Terms
joined by ``+`` must share one factory (all the scripted teachers do; the human oracle does not
combine with them). A factory checks its terms before anything is written (:func:`check_spec`) and
builds the oracle from them, its seed and the run's :class:`OracleContext` (the preference store and
a clip renderer, which a person's oracle needs and a synthetic one ignores).

Beyond the protocol, an oracle may declare optional capabilities, each a protocol of its own:
:class:`StatefulOracle` (state saved in checkpoints), :class:`ResumableOracle` (takes back the queries
left unanswered by a stopped run), :class:`ClosableOracle` (has work to finish when the run ends),
:class:`BehaviourScaledOracle` (told the returns of the agent's recent clips before each round) and
:class:`PacedOracle` (answers at a person's pace: asked for pairs as its labellers need them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from rlhf_control.errors import UserError
from rlhf_control.registry import Registry
from rlhf_control.types import Answer, Query


@runtime_checkable
class Oracle(Protocol):
    """Answers queries, possibly later than they were asked."""

    def submit(self, queries: Sequence[Query]) -> None:
        """Hand over queries to answer; query ids must not already be pending."""
        ...

    def collect(self) -> list[Answer]:
        """Answers that arrived since the last call (each query answered once; skipped = label None)."""
        ...

    @property
    def pending(self) -> int:
        """Queries submitted whose answers have not yet been returned by ``collect``."""
        ...


@runtime_checkable
class StatefulOracle(Protocol):
    """An oracle with state worth a checkpoint (a generator, running statistics): JSON-serialisable."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class ResumableOracle(Protocol):
    """An oracle that takes back, on resume, the queries a stopped run asked and never got answered
    (an oracle without this capability gets them through ``submit``)."""

    def resume(self, pending: Sequence[Query]) -> None: ...


@runtime_checkable
class ClosableOracle(Protocol):
    """An oracle with work in flight (clips being rendered) to finish, for up to ``timeout`` s, at the end."""

    def close(self, timeout: float) -> None: ...


@runtime_checkable
class BehaviourScaledOracle(Protocol):
    """An oracle whose answers scale with how well the agent does now (B-Pref's skip and equal
    teachers): before each round the loop hands it the true returns of the clips the round's pairs are
    drawn from, the agent's recent behaviour."""

    def observe_behaviour(self, returns: Sequence[float]) -> None: ...


@runtime_checkable
class PacedOracle(Protocol):
    """An oracle that answers at a person's pace (the human one). The loop asks it for a few pairs at a
    time, keeping ``unheld()`` (pending pairs no labeller holds) at a small buffer, instead of a
    round's worth; and it pauses the agent while the answers are more than a slack behind the label
    schedule (``RunConfig.label_slack``)."""

    def unheld(self) -> int: ...


@dataclass(frozen=True)
class OracleContext:
    """What a run offers its oracle: the preference store, a clip renderer (anything with
    ``render_pair``) and the folder for clips. Each may be None where the run has none."""

    store: Any = None
    renderer: Any = None
    clips_dir: Path | None = None


class OracleFactory(Protocol):
    """What ``ORACLES`` holds for a name.

    ``shows_clips``: a person watches the pairs, so the run records what clips are drawn from, passes
    a renderer and serves the labelling page. ``needs_true_reward``: the oracle reads the task's
    true reward (a task without one can only be labelled by an oracle that does not).
    """

    shows_clips: bool
    needs_true_reward: bool

    def check(self, terms: list[SpecTerm]) -> None:
        """Refuse bad terms (unknown options, values out of range) with a one-line ValueError."""
        ...

    def build(self, terms: list[SpecTerm], seed: int, context: OracleContext) -> Oracle: ...


ORACLES: Registry[OracleFactory] = Registry("oracle")


@dataclass(frozen=True)
class SpecTerm:
    """One ``name:key=value,...`` term of an oracle spec; values stay strings for the factory to parse."""

    name: str
    params: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.params)


# Split on "+" only where a name starts, so that values such as "1e+3" survive.
_TERM_SPLIT = re.compile(r"\+(?=\s*[A-Za-z_])")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def parse_spec(spec: str) -> list[SpecTerm]:
    """Parse an oracle spec string into terms; raises a one-line ValueError if malformed."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"oracle spec {spec!r} is empty; use e.g. 'perfect' or 'stochastic:beta=2+mistake'")
    terms: list[SpecTerm] = []
    for raw in _TERM_SPLIT.split(spec.strip()):
        raw = raw.strip()
        name, sep, rest = raw.partition(":")
        name = name.strip()
        if not _NAME.match(name):
            raise UserError(f"oracle spec {spec!r}: bad term {raw!r}; use name or name:key=value,...")
        params: list[tuple[str, str]] = []
        if sep:
            for item in rest.split(","):
                key, eq, value = (s.strip() for s in item.partition("="))
                if not eq or not key or not value:
                    raise UserError(
                        f"oracle spec {spec!r}: bad option {item.strip()!r} in {name!r}; use key=value"
                    )
                if any(k == key for k, _ in params):
                    raise UserError(f"oracle spec {spec!r}: option {key!r} given twice for {name!r}")
                params.append((key, value))
        terms.append(SpecTerm(name, tuple(params)))
    names = [t.name for t in terms]
    for n in names:
        if names.count(n) > 1:
            raise UserError(f"oracle spec {spec!r}: {n!r} appears more than once; give each name once")
    return terms


def check_spec(spec: str) -> tuple[OracleFactory, list[SpecTerm]]:
    """Parse and check an oracle spec without building anything: its factory and terms."""
    terms = parse_spec(spec)
    factories = [ORACLES.get(t.name) for t in terms]  # UnknownNameError lists the known names
    for term, factory in zip(terms[1:], factories[1:], strict=True):
        if factory is not factories[0]:
            raise UserError(
                f"oracle spec {spec!r}: {terms[0].name!r} and {term.name!r} cannot be combined with '+'"
            )
    factories[0].check(terms)
    return factories[0], terms


def make_oracle(spec: str, seed: int, context: OracleContext | None = None) -> Oracle:
    """Build the oracle a spec names (see the module docstring), seeded with ``seed``."""
    factory, terms = check_spec(spec)
    return factory.build(terms, int(seed), context or OracleContext())
