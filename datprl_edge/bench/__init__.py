"""Stage bench: latency and memory of models and artifacts, one fresh process per measurement
(`driver.run_bench`, `worker.py`); `inspect.inspect_model`: parameters, MACs and torch latency per
stage of a torch model (`datprl-edge inspect`)."""
