"""Names that processes and deployments must agree on, defined once: the Detector service's full name
and the health-check service names (the README's health section says what each means).

Plain strings, so the pure cores (the worker's health evaluator, the router's controller) can use them
without importing gRPC; a test checks DETECTOR_SERVICE against the generated descriptor.
"""

from __future__ import annotations

DETECTOR_SERVICE = "eagleeye.detector.v1.Detector"

READINESS = "readiness"    # can take traffic now (also "" and DETECTOR_SERVICE)
LIVENESS = "liveness"      # the process is not wedged: restart it when this fails
HEADROOM = "headroom"      # full performance (worker); a soft signal for the router's weights
REDUNDANCY = "redundancy"  # router only: both backends can serve

READINESS_NAMES: tuple[str, ...] = ("", READINESS, DETECTOR_SERVICE)
