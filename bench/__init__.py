"""Benchmarks of bhyvesupd against its peers (supervisord, dd, cp): ``bench/run``."""
