"""The delivery states every reader of sender_delivery agrees on, with no Django import (the read
side, the outbox's purge and the sender all name them in SQL).

Terminal: nothing happens to the delivery any more. `suppressed` is terminal like `sent` and
`failed`: the sender's claim wrote it instead of claiming the recipient, which was on its owner's
suppression list, and the provider never heard of it. Nothing retries, re-drives or resends it.
"""

TERMINAL = ("sent", "failed", "suppressed")
# For SQL text: ('sent', 'failed', 'suppressed').
TERMINAL_SQL = "(" + ", ".join(f"'{state}'" for state in TERMINAL) + ")"
