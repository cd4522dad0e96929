"""Stage 1: run each teacher once over every (sample, view) and write its features into the cache."""
