"""The short profile of the regular suite: how many examples each fuzz test draws
(``NBWOQ_FUZZ_EXAMPLES``, default 40) and the Hypothesis settings they share."""

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("NBWOQ_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
