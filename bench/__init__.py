"""netplane's benchmark harness: scenarios against peers, results, reports and plots.

Run everything with ``python -m bench`` (or ``bench/run``); see bench/README.md.
"""
