"""What the commands answer from a dataset: similar images, its index, near-duplicates, a calibrated threshold, the
pixel verifier, thumbnail pages.
"""
