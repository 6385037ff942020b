"""Stage 3, training: callbacks, progress output, the files a run writes and their error analysis."""
