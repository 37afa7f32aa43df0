"""Temporal action detection metrics: ActivityNet-style mAP over tIoU thresholds
(detection.py), ActivityNet proposal average recall and Ego4D Recall@kx (proposals.py)."""
