"""Temporal action detection metrics: ActivityNet-style mAP over tIoU thresholds."""
