"""pytest-benchmark microbenchmarks: pyrnn and torch.nn side by side (same group), forward, backward and both.

    python -m pytest bench --benchmark-only --benchmark-group-by=group
"""
