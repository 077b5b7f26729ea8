"""Image bytes to feature vectors: the per-process featurizer, ImageVectorizer, the Spark DataFrame column and the
Spark ML transformer.
"""
