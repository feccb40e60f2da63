"""cicd-flows: CI/CD pipelines for Python projects as Prefect 3 flows."""

__version__ = "0.1.0"
