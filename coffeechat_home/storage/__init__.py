"""asyncpg storage: one module per aggregate."""
