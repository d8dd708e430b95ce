"""What the sender does with one email.requested event, without any AMQP: claim, call the
provider, record, schedule what comes next, and say what should happen to the message.

Attempts follow SENDER_RETRY_SCHEDULE (with jitter; by default about 32 hours in all): a
transient answer (5xx, a refused connection) sets the recipient's next attempt and arms the
event's outbox row for it, so the same event comes back then; the message in hand is acked.
`failed` comes only from a permanent answer or a schedule run out, with the reason. A 429
honours Retry-After and gives the attempt back. An exception after the claim counts as an
attempt like any other failure.

Duplicates: the claim makes a redelivered or replayed event, or a second sender holding the
same message, a no-op, and its token fences every outcome write. A delivery whose outcome is in
doubt (the sender died, or lost its database, or the call timed out, after the provider may have
taken the mail) is resolved from the provider's own events: the Event Webhook's `processed` (or
any later status) for it marks it sent, and it is never resent. Only after
SENDER_IN_DOUBT_GRACE_SECONDS with no such event is it sent again (or held for ops, by
SENDER_UNKNOWN_OUTCOME=hold).

Suppressed recipients (on the owner's list at the claim) are settled by the claim itself,
terminal and with their event: the handler only counts them, and sends the others as usual.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import psycopg2
import structlog
from prometheus_client import Counter, Histogram

from core.contracts import EmailRequested
from core.deliveries.store import DeliveryStore
from sender.provider import BAD_KEY, MAX_RECIPIENTS_PER_CALL, PERMANENT, SENT, UNKNOWN, ProviderAnswer

log = structlog.get_logger(__name__)

SENT_TOTAL = Counter("sender_sent_recipients_total", "Recipients the provider accepted")
FAILED_TOTAL = Counter("sender_failed_recipients_total", "Recipients failed", ["permanent"])
RETRIED_TOTAL = Counter("sender_retried_total", "Recipients or messages scheduled for later", ["reason"])
RESOLVED_TOTAL = Counter("sender_in_doubt_resolved_total", "Deliveries in doubt, resolved", ["outcome"])
SUPPRESSED_TOTAL = Counter(
    "sender_suppressed_recipients_total", "Recipients not sent: on their owner's suppression list", ["reason"]
)
FENCED_TOTAL = Counter("sender_outcome_fenced_total", "Outcome writes refused: the claim no longer held the row")
PROVIDER_SECONDS = Histogram(
    "sender_provider_call_seconds",
    "SendGrid call latency",
    ["outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30),
)

ACK, RETRY, BAD_KEY_PAUSE = "ack", "retry", "bad_key"
# 13 attempts over about 32 hours: MTAs and SendGrid itself keep trying for up to 72.
DEFAULT_SCHEDULE = "10s,30s,2m,5m,15m,30m,1h,2h,4h,8h,8h,8h"


@dataclass(frozen=True)
class Policy:
    schedule: tuple[float, ...] = (10, 30, 120, 300, 900, 1800, 3600, 7200, 14400, 28800, 28800, 28800)
    lease_seconds: float = 60.0
    resend_in_doubt: bool = True  # SENDER_UNKNOWN_OUTCOME=retry; False: hold
    in_doubt_grace: float = 300.0
    jitter: float = 0.2

    @property
    def max_attempts(self) -> int:
        return len(self.schedule) + 1


@dataclass(frozen=True)
class Decision:
    action: str  # ACK, RETRY (through a delay queue, no attempt spent), BAD_KEY_PAUSE
    delay: float = 0.0  # seconds, for RETRY
    reason: str = ""


def next_delay(attempt: int, policy: Policy, retry_after: float | None = None) -> float:
    """How long after failed attempt number `attempt` the next one is due: its tier of the
    schedule, with jitter, never sooner than the provider asked."""
    tier = policy.schedule[min(attempt, len(policy.schedule)) - 1]
    return max(tier * random.uniform(1 - policy.jitter, 1 + policy.jitter), retry_after or 0.0)


def handle_email_requested(
    event: EmailRequested, *, provider, store: DeliveryStore, policy: Policy, key_rejected: bool = False
) -> Decision:
    """Deliver what is due of `event`, and arm its outbox row for whatever comes later. Never
    raises for provider errors or bugs after the claim (they count as the attempt); database
    outages propagate (the caller retries the message without counting one)."""
    if key_rejected:
        return Decision(BAD_KEY_PAUSE, reason="the provider refuses our key")
    paused = store.paused_for()
    if paused > 0:
        RETRIED_TOTAL.labels(reason="paused").inc()
        return Decision(RETRY, delay=paused, reason="the provider asked every sender to wait")

    claim = store.claim(
        event,
        lease_seconds=policy.lease_seconds,
        resend_in_doubt=policy.resend_in_doubt,
        in_doubt_grace=policy.in_doubt_grace,
    )
    bound = log.bind(email_id=event.email_id, event_id=event.event_id)
    if claim.seen:
        resolved = store.resolve_seen(event, claim.seen, provider=provider.name)
        RESOLVED_TOTAL.labels(outcome="provider_has_it").inc(resolved)
        bound.info("in_doubt_resolved_as_sent", recipients=resolved)
    if claim.suppressed:
        # Recorded by the claim itself, with email.suppressed: nothing to call, nothing to retry.
        for reason in claim.suppressed.values():
            SUPPRESSED_TOTAL.labels(reason=reason).inc()
        bound.info("email_recipients_suppressed", recipients=len(claim.suppressed))
    if claim.held:
        RESOLVED_TOTAL.labels(outcome="held").inc(len(claim.held))
        bound.warning("delivery_held_for_ops", recipients=len(claim.held))

    # Claimed for one attempt more than the schedule has (their last ended in doubt, or in a
    # crash): no call, they fail with the last attempt's error.
    exhausted = [r for r, attempt in claim.claimed.items() if attempt > policy.max_attempts]
    if exhausted:
        reason = f"gave up after {policy.max_attempts} attempts: {claim.last_errors[exhausted[0]] or 'unknown'}"
        _fenced(
            store.record_failed(
                event,
                exhausted,
                token=claim.token,
                reason=reason,
                permanent=False,
                attempt=policy.max_attempts,
                provider=provider.name,
                uncount=True,
            ),
            exhausted,
        )
        FAILED_TOTAL.labels(permanent="false").inc(len(exhausted))
        bound.warning("email_failed", reason=reason, recipients=len(exhausted))

    recipients = [r for r in event.recipients if r in claim.claimed and r not in exhausted]
    decisions: list[Decision] = []
    for start in range(0, len(recipients), MAX_RECIPIENTS_PER_CALL):
        chunk = recipients[start : start + MAX_RECIPIENTS_PER_CALL]
        attempt = max(claim.claimed[r] for r in chunk)
        result: ProviderAnswer | None = None
        try:
            with PROVIDER_SECONDS.labels(outcome="any").time():
                result = provider.send(event, chunk)
            decisions.append(
                _record(
                    event, chunk, result, attempt, token=claim.token, provider=provider.name, store=store, policy=policy
                )
            )
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            raise
        except Exception as exc:
            decisions.append(
                _crashed(
                    event,
                    chunk,
                    exc,
                    result,
                    attempt,
                    token=claim.token,
                    provider=provider.name,
                    store=store,
                    policy=policy,
                )
            )

    decision = next((d for d in decisions if d.action == BAD_KEY_PAUSE), None)
    if decision is not None:
        return decision  # the delay queue brings the message back after the key probe
    if claim.busy or claim.scheduled or claim.waiting or any(d.action == RETRY for d in decisions):
        armed = store.rearm(event, in_doubt_grace=policy.in_doubt_grace, reason="next attempt")
        bound.info(
            "email_next_attempt_armed",
            at=armed.isoformat() if armed else None,
            busy=len(claim.busy),
            waiting=len(claim.waiting),
        )
    elif not claim.claimed and not claim.seen and not claim.suppressed:
        bound.info("email_already_handled")
    return Decision(ACK)


def _record(
    event: EmailRequested,
    chunk: list[str],
    result: ProviderAnswer,
    attempt: int,
    *,
    token: str,
    provider: str,
    store: DeliveryStore,
    policy: Policy,
) -> Decision:
    bound = log.bind(email_id=event.email_id, event_id=event.event_id, recipients=len(chunk), attempt=attempt)
    if result.kind == SENT:
        _fenced(
            store.record_sent(
                event, chunk, token=token, message_id=result.message_id, attempt=attempt, provider=provider
            ),
            chunk,
        )
        SENT_TOTAL.inc(len(chunk))
        bound.info("email_sent", provider_message_id=result.message_id)
        return Decision(ACK)
    if result.kind == PERMANENT:
        _fenced(
            store.record_failed(
                event, chunk, token=token, reason=result.reason, permanent=True, attempt=attempt, provider=provider
            ),
            chunk,
        )
        FAILED_TOTAL.labels(permanent="true").inc(len(chunk))
        bound.warning("email_failed", reason=result.reason, status=result.status)
        return Decision(ACK)
    if result.kind == BAD_KEY:
        _fenced(store.release(event, chunk, token=token, state="retry", error=result.reason, uncount=True), chunk)
        bound.error("provider_key_rejected", reason=result.reason, status=result.status)
        return Decision(BAD_KEY_PAUSE, reason=result.reason)
    if result.kind == UNKNOWN:
        # The provider may have it: in doubt until its events say so, or the grace runs out.
        _fenced(store.release(event, chunk, token=token, state="unknown", error=result.reason), chunk)
        RETRIED_TOTAL.labels(reason="in_doubt").inc(len(chunk))
        bound.warning("delivery_in_doubt", reason=result.reason)
        return Decision(RETRY, reason=result.reason)
    if result.status == 429:
        # Rate limited: every sender waits as asked, and the attempt is given back.
        pause = result.retry_after if result.retry_after is not None else policy.schedule[0]
        store.pause(pause, result.reason)
        _fenced(
            store.release(event, chunk, token=token, state="retry", error=result.reason, delay=pause, uncount=True),
            chunk,
        )
        RETRIED_TOTAL.labels(reason="429").inc(len(chunk))
        bound.info("email_rate_limited", retry_after=round(pause, 2))
        return Decision(RETRY, reason=result.reason)
    if attempt >= policy.max_attempts:
        reason = f"gave up after {attempt} attempts: {result.reason}"
        _fenced(
            store.record_failed(
                event, chunk, token=token, reason=reason, permanent=False, attempt=attempt, provider=provider
            ),
            chunk,
        )
        FAILED_TOTAL.labels(permanent="false").inc(len(chunk))
        bound.warning("email_failed", reason=reason)
        return Decision(ACK)
    delay = next_delay(attempt, policy, result.retry_after)
    _fenced(store.release(event, chunk, token=token, state="retry", error=result.reason, delay=delay), chunk)
    RETRIED_TOTAL.labels(reason=str(result.status or result.kind)).inc(len(chunk))
    bound.info("email_retry_scheduled", reason=result.reason, delay_seconds=round(delay, 2))
    return Decision(RETRY, delay=delay, reason=result.reason)


def _crashed(
    event: EmailRequested,
    chunk: list[str],
    exc: Exception,
    result: ProviderAnswer | None,
    attempt: int,
    *,
    token: str,
    provider: str,
    store: DeliveryStore,
    policy: Policy,
) -> Decision:
    """A bug, not an outage: it counts as the attempt. If the provider may have the mail (the
    call itself broke, or it answered 202 and the recording broke), the delivery is in doubt;
    otherwise its next attempt follows the schedule."""
    log.exception("delivery_attempt_crashed", email_id=event.email_id, event_id=event.event_id, attempt=attempt)
    error = f"crashed: {exc!r}"[:1000]
    if result is None or result.kind in (SENT, UNKNOWN):
        _fenced(store.release(event, chunk, token=token, state="unknown", error=error), chunk)
    elif attempt >= policy.max_attempts:
        _fenced(
            store.record_failed(
                event,
                chunk,
                token=token,
                permanent=False,
                attempt=attempt,
                provider=provider,
                reason=f"gave up after {attempt} attempts: {error}",
            ),
            chunk,
        )
        return Decision(ACK)
    else:
        _fenced(
            store.release(event, chunk, token=token, state="retry", error=error, delay=next_delay(attempt, policy)),
            chunk,
        )
    return Decision(RETRY, reason=error)


def _fenced(updated: int, chunk: list[str]) -> None:
    if updated < len(chunk):
        FENCED_TOTAL.inc(len(chunk) - updated)
        log.warning(
            "outcome_fenced",
            recipients=len(chunk) - updated,
            reason="the claim no longer held them: another sender took over after the lease ran out",
        )
