"""How closely a reduced-precision model's detections follow the FP32 model's.

Used to check the FP16 and INT8 Q/DQ graphs (``graph_precision``) on real frames, on
the CPU here and on the GPU in ``benchmarks/gpu_check.py``. The FP32 model's detections
are the ground truth. The candidate should be run at a lower score threshold than the
reference, so that a detection scoring 0.31 in FP32 and 0.29 in INT8 counts as found
(VOC AP ranks the candidates; extra low-scoring ones after every match cost nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from shelf_stream.bench.detection_metrics import box_iou, mean_average_precision
from shelf_stream.engine.base import Detections

#: IoU at which a candidate box counts as the same detection.
MATCH_IOU = 0.5


@dataclass(frozen=True, slots=True)
class Agreement:
    """``map50``/``map75``: VOC mAP of the candidate against the reference at IoU 0.5 /
    0.75. ``matched_fraction``: reference detections with a same-class candidate at IoU
    >= 0.5 (greedy, best reference score first); ``mean_matched_iou`` and
    ``max_score_delta`` are over those pairs."""

    frames: int
    reference_detections: int
    candidate_detections: int
    map50: float
    map75: float
    matched_fraction: float
    mean_matched_iou: float
    max_score_delta: float

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def describe(self) -> str:
        return (
            f"mAP@0.5 {self.map50:.3f}, mAP@0.75 {self.map75:.3f}, "
            f"{self.matched_fraction:.0%} of {self.reference_detections} FP32 detections "
            f"matched (mean IoU {self.mean_matched_iou:.3f}, max score delta "
            f"{self.max_score_delta:.3f}) over {self.frames} frames"
        )


def _match_frame(reference: Detections, candidate: Detections) -> list[tuple[float, float]]:
    """(IoU, |score delta|) of each matched reference detection in one frame."""
    pairs: list[tuple[float, float]] = []
    if len(reference) == 0 or len(candidate) == 0:
        return pairs
    ious = box_iou(reference.boxes, candidate.boxes)
    same_class = reference.class_ids[:, None] == candidate.class_ids[None, :]
    ious = np.where(same_class, ious, 0.0)
    taken = np.zeros(len(candidate), dtype=bool)
    for r in np.argsort(-reference.scores, kind="stable"):
        row = np.where(taken, 0.0, ious[r])
        c = int(np.argmax(row))
        if row[c] >= MATCH_IOU:
            taken[c] = True
            pairs.append((float(row[c]), abs(float(reference.scores[r] - candidate.scores[c]))))
    return pairs


def agreement(reference: Sequence[Detections], candidate: Sequence[Detections]) -> Agreement:
    """Compare per-frame detections (frame ``i`` of both lists is the same picture)."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference frames but {len(candidate)} candidate")
    pairs = [
        p for ref, cand in zip(reference, candidate, strict=True) for p in _match_frame(ref, cand)
    ]
    total = sum(len(r) for r in reference)
    return Agreement(
        frames=len(reference),
        reference_detections=total,
        candidate_detections=sum(len(c) for c in candidate),
        map50=mean_average_precision(reference, candidate, 0.5) or 0.0,
        map75=mean_average_precision(reference, candidate, 0.75) or 0.0,
        matched_fraction=len(pairs) / total if total else 1.0,
        mean_matched_iou=float(np.mean([p[0] for p in pairs])) if pairs else 0.0,
        max_score_delta=max((p[1] for p in pairs), default=0.0),
    )
