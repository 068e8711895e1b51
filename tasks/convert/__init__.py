"""Stage 2, conversion: one archive's ZIP member, its CSV dialect, the parser, the external sort, the batches."""
