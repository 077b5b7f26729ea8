"""The feature dataset on storage: its file names, parts and metadata, its lock, starting a run that writes it, and
reading its rows and vectors back.
"""
