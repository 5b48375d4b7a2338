"""Jobs: train, eval, package and data prepare queued with priorities and run by workers on one machine
or many, surviving the terminal that submitted them.

The queue engine is Huey's storage layer (``huey.storage``): SQLite for one machine (nothing to start)
or Redis for several, with the same API: a priority queue (float priorities, so order within a level
can be changed), a key-value store with an atomic put-if-empty (claims, locks), counters (job ids) and
a schedule (retries with backoff). Huey's consumer is not used: a worker here runs each job as a child
process (``python -m expertkit KIND ...``) in its own process group with its own log, and Huey has no
acknowledgements, so leases, heartbeats and the reaper that requeues a lost worker's job are ours
(:mod:`expertkit.jobs.worker`).
"""
