"""The autonomy job (`x0tta6bl4 run`, `jobs/autonomy.py`): its config, the run loop and its report.

``config`` holds RunConfig and the flags; ``job`` plans and executes a run on Ray (or in
process) with the served apps and the MAPE-K controller; ``report`` builds, writes and prints
the run's report.
"""
