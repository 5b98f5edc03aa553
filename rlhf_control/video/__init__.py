"""Clips to mp4: ``mp4`` (the project's one mp4 writer, side-by-side pairs) and ``render`` (segments
drawn from their recorded render states)."""
