"""sentex's own quantized weight files: per-row int8 (:mod:`.int8`) and group-wise int4 (:mod:`.int4`)."""
