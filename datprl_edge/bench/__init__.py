"""Stage bench: latency and memory of models and artifacts, one fresh process per measurement
(`driver.run_bench`, `worker.py`)."""
