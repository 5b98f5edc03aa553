"""Oracles: whoever answers queries. Importing the package registers every built-in oracle."""

from rlhf_control.oracles import human, synthetic  # noqa: F401  (registration)
from rlhf_control.oracles.base import (
    ORACLES,
    BehaviourScaledOracle,
    ClosableOracle,
    Oracle,
    OracleContext,
    OracleFactory,
    PacedOracle,
    ResumableOracle,
    SpecTerm,
    StatefulOracle,
    check_spec,
    make_oracle,
    parse_spec,
)
from rlhf_control.oracles.synthetic import ScriptedTeacher, SyntheticOracle

__all__ = ["ORACLES", "BehaviourScaledOracle", "ClosableOracle", "Oracle", "OracleContext", "OracleFactory", "PacedOracle", "ResumableOracle",
           "ScriptedTeacher", "SpecTerm", "StatefulOracle", "SyntheticOracle", "check_spec", "make_oracle",
           "parse_spec"]
