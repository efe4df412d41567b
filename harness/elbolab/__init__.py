"""elbolab: a performance lab for ELBO kernels across NumPy, PyTorch, Numba and Rust."""

__version__ = "0.1.0"
