"""The delivery states every reader of sender_delivery agrees on, with no Django import (the read
side, the outbox's purge and the sender all name them in SQL).

Terminal: nothing happens to the delivery any more. `suppressed` is terminal like `sent` and
`failed`: the sender's claim wrote it instead of claiming the recipient, which was on its owner's
suppression list, and the provider never heard of it. `cancelled` too: its owner cancelled the
email before any sender claimed it (the cancel wrote the row, so no claim can take it). Nothing
retries, re-drives or resends either.
"""

TERMINAL = ("sent", "failed", "suppressed", "cancelled")
# For SQL text: ('sent', 'failed', 'suppressed', 'cancelled').
TERMINAL_SQL = "(" + ", ".join(f"'{state}'" for state in TERMINAL) + ")"
