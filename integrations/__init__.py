"""Version 0.2's import path of the framework adapters, kept working: they are
:mod:`retrieval_pipeline.integrations` (``integrations.llama_index`` and ``integrations.langchain`` re-export the same
classes)."""
