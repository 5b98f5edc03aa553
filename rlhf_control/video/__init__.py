"""Clips to mp4."""
