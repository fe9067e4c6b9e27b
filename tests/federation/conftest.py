from ..integration.conftest import *  # noqa: F401,F403  (same fixtures: PostgreSQL)
