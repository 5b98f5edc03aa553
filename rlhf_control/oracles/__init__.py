"""Oracles: whoever answers queries. Importing the package registers every built-in oracle."""

from rlhf_control.oracles import human, synthetic  # noqa: F401  (registration)
from rlhf_control.oracles.base import ORACLES, Oracle, SpecTerm, make_oracle, parse_spec
from rlhf_control.oracles.synthetic import ScriptedTeacher, SyntheticOracle

__all__ = ["ORACLES", "Oracle", "ScriptedTeacher", "SpecTerm", "SyntheticOracle", "make_oracle", "parse_spec"]
