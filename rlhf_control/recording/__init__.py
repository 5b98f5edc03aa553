"""From env steps to clips: the trajectory recorder, the segment pool and the render states kept per step."""
