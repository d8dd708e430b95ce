"""What the sender does with one email.requested event, without any AMQP: claim, call the
provider, record, and say what should happen to the message.

Duplicates: the claim makes a redelivered or replayed event, or a second sender holding the same
message, a no-op. The one window left is a crash (or a lost database) between the provider's 202
and the statement that records it: the lease then expires with the delivery still `sending`, and
by SENDER_UNKNOWN_OUTCOME the next claim sends again (`retry`, at-least-once, the default) or
holds it for ops (`hold`). A timeout is the same unknown, recorded as such at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Histogram

from core.contracts import EmailRequested
from sender.provider import BAD_KEY, MAX_RECIPIENTS_PER_CALL, PERMANENT, SENT, UNKNOWN, SendResult
from core.deliveries.store import DeliveryStore

log = structlog.get_logger(__name__)

SENT_TOTAL = Counter("sender_sent_recipients_total", "Recipients the provider accepted")
FAILED_TOTAL = Counter("sender_failed_recipients_total", "Recipients failed", ["permanent"])
RETRIED_TOTAL = Counter("sender_retried_total", "Messages sent back for a later attempt", ["reason"])
PROVIDER_SECONDS = Histogram(
    "sender_provider_call_seconds", "SendGrid call latency", ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)

ACK, RETRY, DEAD_LETTER, BAD_KEY_PAUSE = "ack", "retry", "dead_letter", "bad_key"


@dataclass(frozen=True)
class Policy:
    max_attempts: int = 5
    lease_seconds: float = 60.0
    retry_unknown: bool = True  # SENDER_UNKNOWN_OUTCOME=retry; False: hold
    backoff_base: float = 1.0
    backoff_cap: float = 300.0


@dataclass(frozen=True)
class Decision:
    action: str  # ACK, RETRY, DEAD_LETTER, BAD_KEY_PAUSE
    delay: float = 0.0  # seconds, for RETRY
    reason: str = ""


def backoff(attempt: int, policy: Policy, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, never sooner than the provider asked."""
    ceiling = min(policy.backoff_cap, policy.backoff_base * 2 ** (attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, retry_after or 0.0)


def handle_email_requested(event: EmailRequested, *, provider, store: DeliveryStore, policy: Policy,
                           key_rejected: bool = False) -> Decision:
    """Deliver what is left of `event`. Never raises for provider errors; database errors
    propagate (the caller retries the message without counting an attempt)."""
    if key_rejected:
        return Decision(BAD_KEY_PAUSE, reason="the provider refuses our key")
    paused = store.paused_for()
    if paused > 0:
        RETRIED_TOTAL.labels(reason="paused").inc()
        return Decision(RETRY, delay=paused, reason="the provider asked every sender to wait")

    claim = store.claim(event, lease_seconds=policy.lease_seconds, retry_unknown=policy.retry_unknown)
    if claim.held:
        log.warning("delivery_held_for_ops", email_id=event.email_id, recipients=len(claim.held))
    if not claim.claimed:
        if claim.busy:  # another sender holds them: look again once its lease could have run out
            RETRIED_TOTAL.labels(reason="busy").inc()
            return Decision(RETRY, delay=policy.lease_seconds, reason="leased by another sender")
        log.info("email_already_handled", email_id=event.email_id)
        return Decision(ACK)

    recipients = [r for r in event.recipients if r in claim.claimed]
    attempt = max(claim.claimed.values())
    decisions: list[Decision] = []
    for start in range(0, len(recipients), MAX_RECIPIENTS_PER_CALL):
        chunk = recipients[start:start + MAX_RECIPIENTS_PER_CALL]
        with PROVIDER_SECONDS.labels(outcome="any").time():
            result: SendResult = provider.send(event, chunk)
        decisions.append(_record(event, chunk, result, attempt, provider=provider.name, store=store, policy=policy))
    if claim.busy:
        decisions.append(Decision(RETRY, delay=policy.lease_seconds, reason="partly leased by another sender"))
    return _combine(decisions)


def _record(event: EmailRequested, chunk: list[str], result: SendResult, attempt: int, *, provider: str,
            store: DeliveryStore, policy: Policy) -> Decision:
    bound = log.bind(email_id=event.email_id, event_id=event.event_id, recipients=len(chunk), attempt=attempt)
    if result.kind == SENT:
        store.record_sent(event, chunk, message_id=result.message_id, attempt=attempt, provider=provider)
        SENT_TOTAL.inc(len(chunk))
        bound.info("email_sent", provider_message_id=result.message_id)
        return Decision(ACK)
    if result.kind == PERMANENT:
        store.record_failed(event, chunk, reason=result.reason, permanent=True, attempt=attempt, provider=provider)
        FAILED_TOTAL.labels(permanent="true").inc(len(chunk))
        bound.warning("email_failed", reason=result.reason, status=result.status)
        return Decision(ACK)
    if result.kind == BAD_KEY:
        store.set_state(event, chunk, state="retry", error=result.reason, uncount=True)
        bound.error("provider_key_rejected", reason=result.reason, status=result.status)
        return Decision(BAD_KEY_PAUSE, reason=result.reason)
    if result.kind == UNKNOWN and not policy.retry_unknown:
        store.set_state(event, chunk, state="held", error=result.reason)
        bound.warning("delivery_held_for_ops", reason=result.reason)
        return Decision(ACK)
    # Transient, or unknown under the retry policy.
    if result.status == 429:
        pause = result.retry_after if result.retry_after is not None else policy.backoff_base
        store.pause(pause, result.reason)
    if attempt >= policy.max_attempts:
        reason = f"gave up after {attempt} attempts: {result.reason}"
        store.record_failed(event, chunk, reason=reason, permanent=False, attempt=attempt, provider=provider)
        FAILED_TOTAL.labels(permanent="false").inc(len(chunk))
        bound.warning("email_failed", reason=reason)
        return Decision(DEAD_LETTER, reason=reason)
    store.set_state(event, chunk, state="unknown" if result.kind == UNKNOWN else "retry", error=result.reason)
    RETRIED_TOTAL.labels(reason=str(result.status or result.kind)).inc()
    delay = backoff(attempt, policy, result.retry_after)
    bound.info("email_retry_scheduled", reason=result.reason, delay_seconds=round(delay, 2))
    return Decision(RETRY, delay=delay, reason=result.reason)


def _combine(decisions: list[Decision]) -> Decision:
    for action in (BAD_KEY_PAUSE, RETRY, DEAD_LETTER):
        matching = [d for d in decisions if d.action == action]
        if matching:
            return max(matching, key=lambda d: d.delay)
    return Decision(ACK)
