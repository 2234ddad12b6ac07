"""The deployment pipeline: build a candidate, evaluate it against the live engine, gate,
promote atomically, reload the running service; roll back; rerun when new events arrive.

Nothing is imported here, so ``shoplm.config`` can import :mod:`shoplm.deploy.config`
without pulling in the engine (which imports ``shoplm.config`` itself).
"""
