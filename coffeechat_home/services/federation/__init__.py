"""Federation services built on the transport (federation/) and the
persister: the receiver (inbound transactions), the resident server's side
of rooms (resident.py), the outbound sender (sender.py), checks of single
inbound events (events_in.py)."""
