"""Domain types shared by the services (no grpc, no ORM)."""
