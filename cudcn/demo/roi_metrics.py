"""Box geometry and COCO-style detection metrics for the RoI demo, in NumPy.

Boxes are (..., 4) = (x1, y1, x2, y2) with x2 >= x1, y2 >= y1 (area (x2 - x1)(y2 - y1), no +1).

* :func:`box_iou` — IoU of two broadcastable box arrays.
* :func:`encode` / :func:`decode` — Faster R-CNN box deltas ``((gx - px) / pw, (gy - py) / ph,
  log(gw / pw), log(gh / ph))`` divided by ``DELTA_STD``, centres and sizes of proposal p and target g.
* :func:`nms` — greedy non-maximum suppression within groups (image and class), all groups at once.
* :func:`average_precision` — COCO-style AP: per class, detections of every image sorted by score,
  each a true positive when its class matches and its IoU with an unmatched ground-truth box of its
  image reaches the threshold (the unmatched box of highest IoU, detections taken greedily by score);
  precision made monotone, read at the 101 recall points 0, 0.01, ..., 1 and averaged; the mean over
  the classes that have ground truth.
"""

from __future__ import annotations

import numpy as np

DELTA_STD = np.array([0.1, 0.1, 0.2, 0.2])
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
COCO_THRESHOLDS = np.round(np.arange(0.5, 0.96, 0.05), 2)  # AP50:95


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` (..., 4) and ``b`` (..., 4), broadcast against each other; 0 where the
    union is empty."""
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.divide(inter, union, out=np.zeros(np.shape(inter)), where=union > 0)


def _centre_size(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]


def encode(proposals: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The normalised deltas (N, 4) that move ``proposals`` (N, 4) onto ``targets`` (N, 4)."""
    pc, ps = _centre_size(proposals)
    tc, ts = _centre_size(targets)
    return np.concatenate([(tc - pc) / ps, np.log(ts / ps)], axis=-1) / DELTA_STD


def decode(proposals: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """The boxes (N, 4) that normalised ``deltas`` (N, 4) make of ``proposals`` (N, 4); size changes
    are clipped to e^±4."""
    pc, ps = _centre_size(proposals)
    d = deltas * DELTA_STD
    c = pc + d[..., :2] * ps
    s = ps * np.exp(np.clip(d[..., 2:], -4, 4))
    return np.concatenate([c - s / 2, c + s / 2], axis=-1)


def _grouped(group: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (G, M) of each group's members by falling score, -1 padded, and its validity mask."""
    order = np.lexsort((-score, group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, g.size])
    rank = np.arange(g.size) - np.repeat(starts, sizes)
    table = np.full((starts.size, int(sizes.max(initial=0))), -1)
    table[np.repeat(np.arange(starts.size), sizes), rank] = order
    return table, table >= 0


def nms(boxes: np.ndarray, score: np.ndarray, group: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy NMS run separately in each group: by falling score, a box is kept unless a kept box
    of its group overlaps it with IoU > ``threshold``. boxes (N, 4), score (N,), group (N,) int.
    Returns the kept mask (N,)."""
    keep = np.zeros(score.size, bool)
    if score.size == 0:
        return keep
    table, valid = _grouped(group, score)
    b = boxes[np.where(valid, table, 0)]  # (G, M, 4)
    iou = box_iou(b[:, :, None], b[:, None])  # (G, M, M)
    alive = valid.copy()
    for k in range(table.shape[1]):
        kept = alive[:, k]
        later = np.arange(table.shape[1]) > k
        alive &= ~(kept[:, None] & (iou[:, k] > threshold) & later)
    keep[table[alive]] = True
    return keep


def _true_positives(det_boxes, det_score, det_image, gt_boxes, gt_image, threshold) -> np.ndarray:
    """Greedy matching of one class's detections to its ground truth, image by image, all images at
    once: (D,) bool."""
    tp = np.zeros(det_score.size, bool)
    if det_score.size == 0 or gt_image.size == 0:
        return tp
    table, valid = _grouped(det_image, det_score)
    images = det_image[table[:, 0]]
    gt_table, gt_valid = _grouped(gt_image, np.zeros(gt_image.size))
    gt_row = np.full(int(max(images.max(), gt_image.max())) + 1, -1)
    gt_row[gt_image[gt_table[:, 0]]] = np.arange(gt_table.shape[0])
    rows = gt_row[images]  # the ground-truth row of each detection group, -1 if none
    g_idx = np.where(rows[:, None] >= 0, gt_table[rows], -1)  # (G, K)
    g_ok = (g_idx >= 0) & (rows[:, None] >= 0) & gt_valid[rows]
    gb = gt_boxes[np.where(g_ok, g_idx, 0)]
    db = det_boxes[np.where(valid, table, 0)]
    iou = np.where(g_ok[:, None], box_iou(db[:, :, None], gb[:, None]), -1.0)  # (G, M, K)
    free = g_ok.copy()
    for k in range(table.shape[1]):
        cand = np.where(free, iou[:, k], -1.0)
        best = cand.argmax(axis=1)
        hit = valid[:, k] & (cand.max(axis=1) >= threshold)
        free[np.flatnonzero(hit), best[hit]] = False
        tp[table[hit, k]] = True
    return tp


def _ap(score: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    if score.size == 0:
        return 0.0
    order = np.argsort(-score, kind="stable")
    hits = np.cumsum(tp[order])
    recall = hits / n_gt
    precision = hits / np.arange(1, score.size + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    values = np.where(at < score.size, envelope[np.minimum(at, score.size - 1)], 0.0)
    return float(values.mean())


def average_precision(
    det_boxes: np.ndarray,
    det_score: np.ndarray,
    det_class: np.ndarray,
    det_image: np.ndarray,
    gt_boxes: np.ndarray,
    gt_class: np.ndarray,
    gt_image: np.ndarray,
    thresholds,
) -> np.ndarray:
    """COCO-style AP (0..1) at each IoU threshold of ``thresholds``: one value per threshold, the
    mean over the classes present in ``gt_class``. Detections: boxes (D, 4), scores, classes and
    image indices (D,); ground truth: boxes (T, 4), classes and image indices (T,)."""
    thresholds = np.atleast_1d(np.asarray(thresholds, dtype=float))
    classes = np.unique(gt_class)
    out = np.zeros((thresholds.size, classes.size))
    for j, c in enumerate(classes):
        d, g = det_class == c, gt_class == c
        for i, t in enumerate(thresholds):
            tp = _true_positives(det_boxes[d], det_score[d], det_image[d], gt_boxes[g], gt_image[g], t)
            out[i, j] = _ap(det_score[d], tp, int(g.sum()))
    return out.mean(axis=1)
