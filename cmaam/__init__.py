"""cmaam."""
