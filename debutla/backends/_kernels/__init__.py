"""Namespace of the generated Numba kernel modules (filled at run time).

Kernel modules are written to the kernel cache folder and executed by
:mod:`debutla.backends._cache`; they are registered here as
``debutla.backends._kernels.<stem>_<hash>`` instead of as top-level modules.
"""
