"""One module per objective: its coefficients, its `Objective` declaration and its public loss function.

Adding one: a module like `dft.py`, then one line in `dftune.losses.registry`.
"""
