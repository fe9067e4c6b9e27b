"""aiohttp routes: parse, validate, call a service, shape the response."""
