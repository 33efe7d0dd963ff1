"""nanovoice benchmarks: ``python -m bench.bench`` (see ``bench/README.md``)."""
