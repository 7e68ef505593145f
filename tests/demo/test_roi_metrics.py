"""The RoI demo's box geometry, NMS and COCO-style AP on tiny hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from cudcn.demo.roi_metrics import average_precision, box_iou, decode, encode, nms

SEED = 20261201


def test_box_iou_by_hand():
    a = np.array([0.0, 0.0, 2.0, 2.0])
    assert box_iou(a, np.array([1.0, 1.0, 3.0, 3.0])) == pytest.approx(1 / 7)  # 1 / (4 + 4 - 1)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, np.array([2.0, 0.0, 4.0, 2.0])) == 0.0  # touching edges
    assert box_iou(np.zeros(4), np.zeros(4)) == 0.0  # empty union
    many = box_iou(np.array([[0.0, 0, 2, 2], [0, 0, 1, 2]])[:, None], a[None, None])
    np.testing.assert_allclose(many, [[1.0], [0.5]])


def test_encode_decode_round_trip():
    rng = np.random.default_rng(SEED)
    print("seed", SEED)
    p = np.concatenate([rng.uniform(0, 30, (5, 2)), rng.uniform(40, 60, (5, 2))], axis=1)
    g = p + rng.uniform(-3, 3, (5, 4))
    np.testing.assert_allclose(decode(p, encode(p, g)), g, atol=1e-12)
    # a box shifted by its own width: dx = 1 / 0.1 = 10
    d = encode(np.array([[0.0, 0, 4, 2]]), np.array([[4.0, 0, 8, 2]]))
    np.testing.assert_allclose(d, [[10.0, 0, 0, 0]], atol=1e-12)


def test_nms_keeps_and_suppresses_within_groups():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 0, 10, 10.0], [0, 0, 10, 6.0]])
    score = np.array([0.9, 0.8, 0.7, 0.95, 0.6])
    group = np.array([0, 0, 0, 1, 0])
    keep = nms(boxes, score, group, 0.5)
    # box 1 overlaps box 0 (IoU 9/11 > 0.5): suppressed; box 2 is far away; box 3 is alone in its
    # group; box 4 has IoU 0.6 with box 0: suppressed
    assert keep.tolist() == [True, False, True, True, False]
    assert nms(boxes, score, group, 0.85).all()  # IoU 9/11 and 0.6 are below 0.85
    # a suppressed box does not suppress others: 0 kills 1, 1 would have killed 2, 2 is kept
    chain = np.array([[0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10.0]])
    assert nms(chain, np.array([3.0, 2, 1]), np.zeros(3, int), 0.3).tolist() == [True, False, True]


def test_average_precision_by_hand():
    # one class, two images, three ground-truth boxes; five detections by falling score:
    # TP (image 0), FP (a duplicate of the same box), TP (image 1), FP (far), TP (image 1, 2nd box)
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30.0]])
    gt_image, gt_class = np.array([0, 1, 1]), np.zeros(3, int)
    det = np.array([[0, 0, 10, 10], [0, 0, 10, 9], [1, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 28.0]])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    det_image = np.array([0, 0, 1, 1, 1])
    # precision after each: 1, 1/2, 2/3, 2/4, 3/5; recall 1/3, 1/3, 2/3, 2/3, 1
    # envelope: 1, 2/3, 2/3, 3/5, 3/5 -> recall points 0..0.33 (34 points) read 1, 0.34..0.66
    # (33 points) read 2/3, 0.67..1.0 (34 points) read 3/5
    expected = (34 * 1 + 33 * 2 / 3 + 34 * 3 / 5) / 101
    ap = average_precision(det, score, np.zeros(5, int), det_image, gt, gt_class, gt_image, [0.5])
    assert ap[0] == pytest.approx(expected, rel=1e-12)
    # at IoU 0.85 the last detection (IoU 0.8) is a false positive: recall never reaches 1
    ap85 = average_precision(det, score, np.zeros(5, int), det_image, gt, gt_class, gt_image, 0.85)
    assert ap85[0] == pytest.approx((34 * 1 + 33 * 2 / 3) / 101, rel=1e-12)


def test_average_precision_classes_and_empty():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30.0]])
    det = gt.copy()
    # class 0 found, class 1 detected as class 0 -> class 1 AP 0, class 0 AP: TP then FP = 1.0
    ap = average_precision(
        det,
        np.array([0.9, 0.8]),
        np.array([0, 0]),
        np.zeros(2, int),
        gt,
        np.array([0, 1]),
        np.zeros(2, int),
        [0.5],
    )
    assert ap[0] == pytest.approx(0.5)
    none = average_precision(
        np.zeros((0, 4)),
        np.zeros(0),
        np.zeros(0, int),
        np.zeros(0, int),
        gt,
        np.array([0, 1]),
        np.zeros(2, int),
        [0.5, 0.75],
    )
    assert none.tolist() == [0.0, 0.0]
