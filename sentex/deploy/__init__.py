"""Stage 5, deployment: the export format, ``sentex export``, loading for inference, quantization, bench."""
