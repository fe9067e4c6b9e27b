"""Client-server API routes."""
