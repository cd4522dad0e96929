"""The networks both stages share: teachers (registry, weights), the student with its projector
ladder, and ``pixels`` (replaying a planned view, normalising it for a model)."""
