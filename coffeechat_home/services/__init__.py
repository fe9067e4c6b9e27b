"""Use cases combining protocol rules and storage."""
