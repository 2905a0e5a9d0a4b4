"""Regenerate tests/golden/tiny.ddz, the worked example of spec/ddz.md (run from the repo root).

The file is deterministic: running this twice gives the same bytes, and tests check that
the library still writes exactly these bytes and that spec/ddz.md shows them.
"""

import numpy as np

import codec


def write_tiny(path: str) -> None:
    with codec.Writer(path, {"note": "tiny"}) as w:
        w.add("labels", np.array([0, 1, 2], np.uint8))
        w.add("idx", np.array([1, 2, 3, 4, 5], np.uint8), bits=3)


if __name__ == "__main__":
    write_tiny("tests/golden/tiny.ddz")
    print(open("tests/golden/tiny.ddz", "rb").read().hex())
