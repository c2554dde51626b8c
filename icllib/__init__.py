"""icllib: the library behind ICL Book.

Part I (Yang, Huang, Liang & Chi 2024): ``basis``, ``prompts``, ``kernels``, ``models``, ``train``, ``theory``.
Part II (Hendel, Geva & Globerson 2023): ``llm``, ``lang_tasks``, ``task_vectors``.
Part III (the bridge): ``bridge``, ``probes``, ``tv_experiments``.
Shared: ``settings`` (size and model switches), ``cache`` (on-disk results), ``plotting`` (figure style).

Submodules are imported on demand (``from icllib import kernels``) so that ``import icllib`` stays cheap.
"""

__version__ = "0.1.0"
