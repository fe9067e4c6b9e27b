"""Server administration use cases (the admin API and the admin commands)."""
