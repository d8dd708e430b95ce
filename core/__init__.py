"""What every service shares: settings, logging, the message contract, accounts and the outbox."""
