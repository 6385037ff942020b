"""File writing that survives crashes: atomic files and folders, and checkpoint I/O."""
