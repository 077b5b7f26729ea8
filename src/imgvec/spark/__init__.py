"""Spark plumbing that knows no imgvec job: the session (started early, quiet), one function that runs a plan of rows
as one task each, the JVM's class archive, files shipped with a job.
"""
