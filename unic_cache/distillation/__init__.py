"""Stage 2: train a student from the cache alone: data stream (``loader``), target standardisation
(``normalize``), losses with teacher dropping (``losses``) and the training recipe (``recipe``)."""
