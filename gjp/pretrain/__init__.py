"""``gjp pretrain``: training loops, one module per model, and the run directories they
write (:mod:`gjp.pretrain.runs`)."""
