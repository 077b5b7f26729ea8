"""Pure numpy kernels: exact cosine top-k and pairs above a threshold, their union into groups, and the choice of kept
files and their witnesses.
"""
