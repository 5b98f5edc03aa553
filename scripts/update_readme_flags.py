"""Rewrite the README's table of `rlhf-control train` flags from the parser (RunConfig's docstrings).

    python scripts/update_readme_flags.py          # rewrite README.md in place
    python scripts/update_readme_flags.py --check  # exit 1 if the README's table is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhf_control.cli import train_flags_markdown

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- train flags: scripts/update_readme_flags.py -->", "<!-- end of train flags -->"


def with_flags(text: str) -> str:
    """``text`` with the block between the markers replaced by the current table."""
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{train_flags_markdown()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check; exit 1 if the README is out of date")
    args = p.parse_args(argv)
    text = README.read_text()
    new = with_flags(text)
    if args.check:
        print("README flags table is up to date" if new == text else "README flags table is out of date")
        return 0 if new == text else 1
    README.write_text(new)
    print(f"wrote {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
