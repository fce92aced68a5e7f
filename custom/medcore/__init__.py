"""Small pieces shared by the segmentation and pathology packages: atomic file output, progress logging and
the random fields the synthetic-data generators are built from."""
