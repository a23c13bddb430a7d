"""Adapters that let other agent frameworks keep their state in a clawvm-store database.

Each adapter lives in its own module and imports its framework only when that module is
imported, so ``clawvm_store`` itself never needs them:

* :mod:`clawvm_store.integrations.langgraph`: :class:`ClawVMSaver`, a LangGraph checkpointer
  (``pip install "clawvm-store[langgraph]"``).
"""
