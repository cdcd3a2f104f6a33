"""Site profiles: a hospital's own labelled images, read safely, and the recalibration + thresholds fitted on them."""
