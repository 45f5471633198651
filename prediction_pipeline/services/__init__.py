"""Use cases that combine clients and the store (one code path each), below resources:
defs -> resources -> services -> clients/store -> core."""
