"""embedforge: build general-purpose text-embedding models the QZhou-Embedding way, on Ray.

Stages talk through files (Parquet/JSONL on local disk or any fsspec URI); this package holds
the library, `jobs/` holds thin Ray job entrypoints.
"""

__version__ = "0.1.0"
