"""The work of each CI concern, one module per concern.

Pure functions do the work; the thin ``@task`` wrappers at the bottom of
each module add retries, caching and artifacts.
"""
