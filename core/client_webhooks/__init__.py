"""Status webhooks to clients: the endpoints users register, the messages the projector queues for
them (the feature's own outbox) and the log of every delivery attempt. The projector (query_api)
writes messages, the notifier delivers them, the command API manages endpoints: all three meet
here and in Postgres."""
