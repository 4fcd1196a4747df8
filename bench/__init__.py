"""The benchmark harness: ``python -m bench.harness SCENARIO`` (see bench/README.md).

- :mod:`bench.harness`: the scenarios, the run (broker, plant, subscriber, agent), the report.
- :mod:`bench.plant`: the simulated plant, run in its own process, counting requests.
- :mod:`bench.subscriber`: the cloud side, counting and checking every reading.
- :mod:`bench.procfs`: a process's CPU time, memory and disk writes from ``/proc``.
- :mod:`bench.values`: the values the plant serves, so a reading can be checked.

Benchmarks are not tests: nothing here asserts on speed.
"""
