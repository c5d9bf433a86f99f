"""infersup: launch and supervise LLM inference servers from declarative profiles."""

__version__ = "0.1.0"
