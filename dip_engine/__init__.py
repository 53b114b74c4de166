"""Deep Image Prior engine: a plain PyTorch library.

Import the submodules you need (``dip_engine.restore``, ``dip_engine.fit``,
``dip_engine.physics``...). This package file stays free of torch imports so
that torch-free modules (``spec``, ``history``, ``io``, ``presets``) can be used
by the web API without loading PyTorch.
"""

__version__ = "0.1.0"
