"""The server-server API (federation listener): key routes, request
authentication and the federation routes."""
