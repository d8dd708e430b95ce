"""The read side: the denormalized sent-email log, the projector that keeps it, the query API."""
