"""Pose sources: where the head is (simulated headset now; OpenXR later)."""

from engine.pose.base import EyeView, Fov, Pose, PoseSample, PoseSource

__all__ = ["EyeView", "Fov", "Pose", "PoseSample", "PoseSource"]
