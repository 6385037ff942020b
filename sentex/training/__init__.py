"""Stage 3, training: optimizer and schedule, callbacks, progress output, the files a run writes."""
