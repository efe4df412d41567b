"""Measuring: the plan of cases, the runner and its workers (both sides of the pipe), opening a
case, the timer, instruction counts, the machine's roofline probes and health, and training.

Imports the model and the store (the results file it writes); never analysis or presentation.
"""
