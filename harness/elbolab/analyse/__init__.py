"""Analysis of results: the one verdict rule, comparisons of runs, a run as a table of rates and
speed-ups, anomalies, the claims check, and change points across commits.

Imports the model and the store; never measures (it has no clock) and never prints.
"""
