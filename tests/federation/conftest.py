from ..integration.conftest import *  # noqa: F401,F403  (same fixtures: PostgreSQL)
from .receive_helpers import setup  # noqa: F401  (our server and test_receive's Origin: a fixture)
