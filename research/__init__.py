"""Research harnesses of the repository, not shipped in the wheel: the context-head study
(``python -m research.compare_heads``, docs/head_study.md) and the folder-throughput
experiments (``python -m research.folder_throughput``). Run them from the repository root."""
