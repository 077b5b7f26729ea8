"""Images in: listing and reading sources (files, folders, object stores, Parquet tables), decoding bytes, resizing to
a network's input, and the edits calibrate makes.
"""
