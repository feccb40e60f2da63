"""The pipelines, one module each, reading like the workflow it replaces."""
