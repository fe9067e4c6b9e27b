"""Federation services: the receiver (inbound transactions)."""
