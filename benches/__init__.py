"""Benchmarks of prefork-work and its peers (rq, celery, dramatiq, huey, arq); see README.md."""
