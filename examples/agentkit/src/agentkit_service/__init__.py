"""A tiny HTTP service around agentkit, so that cicd-flows deploys run for real.

The flags below are part of a release: a commit that changes them is a release
that answers errors or never becomes healthy (the deploy tests' scenarios).
"""

# Every ERROR_EVERY-th request (the first included) answers 500; 0: never.
ERROR_EVERY = 0
# False: /healthz always answers 503 (a release that never becomes healthy).
HEALTHY = True
# > 0: /healthz answers 503 once the process has run this long (a release that degrades).
HEALTHY_SECONDS = 0.0
# Extra seconds every request takes (a slower release).
DELAY_SECONDS = 0.0
