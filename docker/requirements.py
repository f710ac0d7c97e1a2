"""Print pyproject.toml's dependencies (plus extras, minus some) as a requirements file.

The images install exactly the version ranges pyproject.toml declares, so an image and
a `pip install .` never drift apart. Standard library only, Python 3.10+ (runs before anything is
installed): `python docker/requirements.py --extra train --extra azure --without pillow`.
"""

import argparse
import ast
import re
from pathlib import Path


def requirements(pyproject: Path, extras: list[str], without: list[str]) -> list[str]:
    text = pyproject.read_text()
    found = _array(text, "dependencies")
    for extra in extras:
        found += _array(text, extra)
    skipped = {name.lower() for name in without}
    return [r for r in found if _name(r) not in skipped and not _name(r).startswith("disttrain")]


def _array(text: str, key: str) -> list[str]:
    """The string array `key = [...]` of pyproject.toml (tomllib is not in Python 3.10)."""
    match = re.search(rf"(?m)^{re.escape(key)} = (\[.*?\])\s*$", text, re.DOTALL)
    if match is None:
        raise SystemExit(f"pyproject.toml has no array {key!r}")
    body = re.sub(r"(?m)#.*$", "", match.group(1))
    return list(ast.literal_eval(body))


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=~!\[;]", requirement, maxsplit=1)[0].lower()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--pyproject", default="pyproject.toml", type=Path)
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--without", nargs="*", default=[])
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.extra, args.without)))
