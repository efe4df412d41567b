"""The model: what a case is, what a measurement records, the workloads with their references and
accuracy bounds, the cost and roofline model, the published claims, and the backend contract.

The bottom layer: it imports nothing else of the lab (every layer above may import it).
"""
