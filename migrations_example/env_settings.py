"""Settings shared by env.py's migrations and the example application."""

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{HERE / 'example.db'}"
NAMESPACE = os.environ.get("SQLA_CACHE_NAMESPACE", "example")
