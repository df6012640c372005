"""Demo data modules and CNNs for the README's demo, the examples, tests and benchmarks.

Not imported by the monitors. The digits data needs scikit-learn and the command-line demo jsonargparse:
``pip install lightning_cnnviz[demo]``.
"""
