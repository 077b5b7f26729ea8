"""Plain parts every stage uses: default settings, storage (local paths and URIs), path comparison, progress lines,
one-line text. No torch, no Spark.
"""
