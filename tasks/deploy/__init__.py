"""Deploys (issue 12): runtimes behind one interface, an nginx proxy, health
checks, canary analysis, strategies as plans of steps, rollback, history."""
