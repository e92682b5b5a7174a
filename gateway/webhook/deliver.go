package webhook

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook/signature"
)

// attempt makes e's next attempt and records it in the delivery log. It reports whether
// e is finished: delivered, gone (410), refused by the network policy, out of attempts,
// or dropped. Otherwise e.nextAt is when to try again (stored with the pending delivery),
// or ctx ended. Failures are logged, never returned: a webhook never changes its job
// (ADR-0005).
func (d *Dispatcher) attempt(ctx context.Context, e *event) bool {
	id := e.webhookID()
	log := d.log.With("job_id", e.jobID, "webhook_id", id)
	if !e.manual {
		defer func() { e.body, e.job = nil, nil }() // read again for the next attempt
	}
	// The receiver's slot comes before the body: of the events waiting on a receiver, at
	// most 2 × PerReceiver have a goroutine and a body in memory (those in flight and
	// those waiting); the others wait in their lanes and ask again.
	e.parked = false
	release, err := d.acquire(ctx, e.receiver, e.jobID)
	if errors.Is(err, errReceiverBusy) {
		e.parked = true // until a release or the receiver's backstop wakes the lane
		log.Debug("webhook receiver busy; the event waits in its lane", "receiver", e.receiver)
		return false
	}
	if err != nil {
		return false // ctx ended
	}
	// A place among all receivers' attempts in flight, taken before the body is read:
	// an attempt waiting for one holds neither its body nor a connection (ADR-0122).
	releasePlace, err := d.takePlace(ctx)
	if err != nil {
		release()
		return false // ctx ended
	}
	releaseSlot := release
	release = func() {
		releasePlace()
		releaseSlot()
	}
	held := true
	defer func() {
		if held {
			release()
		}
	}()
	if !e.manual && !d.load(ctx, e, log) {
		if ctx.Err() != nil {
			return false
		}
		return e.nextAt.IsZero() // zero: nothing left to deliver
	}
	log = log.With("model", e.job.Model, "state", e.job.State)
	if e.attempts >= d.cfg.Attempts {
		d.spentBefore(ctx, e, id, log)
		d.finish(ctx, e)
		return true // attempts spent before a restart
	}
	n := e.attempts + 1
	status, retryAfter, err := d.post(ctx, e, id)
	release()
	held = false
	if ctx.Err() != nil {
		return false
	}
	rec := broker.DeliveryAttempt{
		WebhookID: id, State: e.job.State, Attempt: n, URL: e.job.Webhook.URL,
		Status: status, Manual: e.manual, At: time.Now().UTC(),
	}
	if err != nil {
		rec.Error = err.Error()
	}
	switch {
	case err == nil && status >= 200 && status < 300:
		rec.Outcome = broker.OutcomeDelivered
	case err == nil && status == http.StatusGone:
		rec.Outcome = broker.OutcomeGone
	case errors.Is(err, ErrRefused):
		rec.Outcome = broker.OutcomeRefused
	case n == d.cfg.Attempts:
		rec.Outcome = broker.OutcomeFailed
	default:
		rec.Outcome = broker.OutcomeRetry
	}
	d.record(ctx, e, rec)
	if fn := d.cfg.OnAttempt; fn != nil {
		fn(attemptOutcome(rec.Outcome))
	}
	e.attempts = n
	failed := failureArgs(e.job.Webhook.URL, status, err)
	switch rec.Outcome {
	case broker.OutcomeDelivered:
		log.Debug("webhook delivered", "attempt", n, "status", status)
	case broker.OutcomeGone:
		log.Info("webhook receiver answered 410; no more events for this job", "attempt", n)
	case broker.OutcomeFailed:
		log.Warn("webhook delivery failed; giving up", append(failed, "attempt", n)...)
	case broker.OutcomeRefused:
		log.Warn("webhook address refused by the network policy; not retried", failed...)
	default:
		wait := d.backoff(n, retryAfter)
		e.nextAt = time.Now().Add(wait)
		d.logRetry(log, e.job.Webhook.URL, status, err, "attempt", n, "retry_in", wait)
		if !e.manual {
			d.save(ctx, e, log)
		}
		return false
	}
	d.finish(ctx, e)
	return true
}

// load prepares a stored event's attempt: its body and progress (read from the store
// unless the event came with them) and the delivery log. It reports whether to attempt;
// if not, e.nextAt is zero when there is nothing left to deliver (finished: the pending
// delivery is removed) or the time to look again.
func (d *Dispatcher) load(ctx context.Context, e *event, log *slog.Logger) bool {
	if e.body == nil && !d.loadStored(ctx, e, log) {
		return false
	}
	past, err := d.store.Deliveries(ctx, e.jobID)
	if err != nil {
		log.Warn("read delivery log", "err", err)
	}
	id := e.webhookID()
	var (
		newer   uint64 // the latest revision of the job's events attempted, when later than e's
		settled bool   // e's own attempts ended (failed, refused or superseded)
	)
	for _, a := range past {
		if a.Manual { // manual redeliveries neither stop nor count for the automatic ones
			continue
		}
		if a.Outcome == broker.OutcomeGone || (a.WebhookID == id && a.Outcome == broker.OutcomeDelivered) {
			// The receiver asked for no more events of this job, or this event was
			// delivered and only its removal was lost.
			d.finish(ctx, e)
			e.nextAt = time.Time{}
			return false
		}
		if a.WebhookID == id {
			e.attempts = max(e.attempts, a.Attempt) // attempts logged but not stored (a crash)
			settled = settled || a.Outcome != broker.OutcomeRetry
		} else if rev, ok := eventRev(e.jobID, a.WebhookID); ok && rev > e.rev {
			newer = max(newer, rev)
		}
	}
	if newer > 0 {
		d.supersede(ctx, e, newer, !settled, log)
		return false
	}
	return true
}

// supersede finishes a stored event without sending it: a later event of its job was
// sent (or tried) already, and this one would reach the receiver after it, an old state
// after a newer one (ADR-0055). An event JetStream offers again after the job's later
// events (its message left unacked by a dispatcher that stopped) is one. Unless e's own
// attempts had ended already, the delivery log records it as superseded.
func (d *Dispatcher) supersede(ctx context.Context, e *event, newer uint64, record bool, log *slog.Logger) {
	later := (&event{jobID: e.jobID, rev: newer}).webhookID()
	log.Info("webhook event superseded: a later event of its job went out first; not sent", "later_webhook_id", later, "state", e.job.State)
	if record {
		d.record(ctx, e, broker.DeliveryAttempt{
			WebhookID: e.webhookID(), State: e.job.State, Attempt: e.attempts, URL: e.job.Webhook.URL,
			Error: "not sent: " + later + " of the job went out first", Outcome: broker.OutcomeSuperseded, At: time.Now().UTC(),
		})
	}
	d.finish(ctx, e)
	e.nextAt = time.Time{}
}

// eventRev reads the record revision out of a webhook-id of job jobID ("<job id>-<rev>").
func eventRev(jobID, webhookID string) (uint64, bool) {
	s, ok := strings.CutPrefix(webhookID, jobID+"-")
	if !ok {
		return 0, false
	}
	rev, err := strconv.ParseUint(s, 10, 64)
	return rev, err == nil
}

// loadStored reads a stored event's body and progress; see load for what false means
// (here also a retry not due yet).
func (d *Dispatcher) loadStored(ctx context.Context, e *event, log *slog.Logger) bool {
	p, err := d.store.PendingDelivery(ctx, e.jobID, e.rev)
	if errors.Is(err, broker.ErrNotFound) {
		log.Debug("pending webhook delivery is gone (expired with its job)")
		e.nextAt = time.Time{}
		return false
	}
	if err != nil {
		log.Warn("read pending webhook delivery", "err", err)
		e.nextAt = time.Now().Add(d.cfg.BaseDelay)
		return false
	}
	if p.Owner != "" && p.Owner != d.store.BootID() {
		// Another foreman's: one that adopted it (this one taken for gone, its presence
		// lapsed), or the one that stored it (an event this dispatcher got again).
		log.Info("pending webhook delivery held by another foreman; left to it", "owner", p.Owner)
		e.nextAt = time.Time{}
		return false
	}
	job, err := broker.DecodeJob(p.Body)
	if err != nil || job.Webhook == nil {
		log.Warn("undecodable pending webhook delivery dropped", "err", err)
		d.finish(ctx, e)
		e.nextAt = time.Time{}
		return false
	}
	e.body, e.job, e.attempts, e.srev = p.Body, job, max(e.attempts, p.Attempts), p.Revision
	// An event JetStream offered again (its ack lost) comes due at once; its stored retry
	// wait holds, up to MaxDelay from when it is first read (storedNextAt).
	if next := d.storedNextAt(p.NextAt); !e.waitRead && next.After(e.nextAt) {
		e.nextAt = next
	}
	e.waitRead = true
	return time.Until(e.nextAt) <= 0
}

// storedNextAt is when a stored retry comes due here: its NextAt, by the clock of the
// foreman that stored it, never more than MaxDelay from now (no wait is longer), so a
// clock that was ahead, or this one stepped back, holds no delivery for longer.
func (d *Dispatcher) storedNextAt(next time.Time) time.Time {
	now := time.Now()
	return now.Add(min(next.Sub(now), d.cfg.MaxDelay)) // with the monotonic reading
}

// save stores a stored event's progress, so its retry survives a restart.
func (d *Dispatcher) save(ctx context.Context, e *event, log *slog.Logger) {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	p := broker.PendingDelivery{JobID: e.jobID, Rev: e.rev, Attempts: e.attempts, NextAt: e.nextAt.UTC(), Body: e.body, Revision: e.srev}
	rev, err := d.store.UpdatePendingDelivery(sctx, p)
	switch {
	case err == nil:
		e.srev = rev
	case errors.Is(err, broker.ErrConflict):
		// Adopted by another foreman meanwhile: the next attempt's read finds it so.
		log.Info("store webhook retry: the pending delivery was written by another foreman", "err", err)
	default:
		log.Warn("store webhook retry", "err", err)
	}
}

// finish removes a stored event's pending delivery. The event stops being known first:
// a redelivery of it arriving once the pending delivery is gone is then queued again
// (and meets the delivery log) rather than skipped as one the lane still holds. Claims
// leave it alone until the removal returned (finishing): one reading the entry meanwhile
// would queue it again, and send it twice were its delivery log write lost. A removal
// that failed leaves the entry to a later claim.
func (d *Dispatcher) finish(ctx context.Context, e *event) {
	if e.manual {
		return
	}
	id := e.webhookID()
	d.mu.Lock()
	delete(d.known, id)
	d.finishing[id] = true
	d.mu.Unlock()
	defer func() {
		d.mu.Lock()
		delete(d.finishing, id)
		d.mu.Unlock()
	}()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := d.store.FinishPendingDelivery(fctx, e.jobID, e.rev); err != nil {
		d.log.Warn("remove finished webhook delivery", "job_id", e.jobID, "webhook_id", e.webhookID(), "err", err)
	}
}

// spentBefore ends the delivery log of event e, whose attempts so far already reach
// Attempts, with its giving up, unless its last attempt was recorded as the last one (a
// restart between that record and the pending delivery's removal). Otherwise Attempts
// was lowered (FOREMAN_WEBHOOK_ATTEMPTS) since a start that meant to try again: the log
// said "retry" for ever and the event was dropped without a word.
func (d *Dispatcher) spentBefore(ctx context.Context, e *event, id string, log *slog.Logger) {
	if e.manual {
		return
	}
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	past, err := d.store.Deliveries(lctx, e.jobID)
	cancel()
	if err != nil {
		past = nil // logged as given up once more rather than not at all
	}
	for i := len(past) - 1; i >= 0; i-- {
		if past[i].WebhookID == id && !past[i].Manual {
			if past[i].Outcome != broker.OutcomeRetry {
				return
			}
			break
		}
	}
	log.Warn("webhook delivery given up: its attempts before the restart already reach FOREMAN_WEBHOOK_ATTEMPTS",
		"attempts", e.attempts, "webhook_attempts", d.cfg.Attempts)
	d.record(ctx, e, broker.DeliveryAttempt{
		WebhookID: id, State: e.job.State, Attempt: e.attempts, URL: e.job.Webhook.URL, Outcome: broker.OutcomeFailed,
		Error: fmt.Sprintf("given up: %d attempts made, FOREMAN_WEBHOOK_ATTEMPTS is %d", e.attempts, d.cfg.Attempts),
		At:    time.Now().UTC(),
	})
}

func (d *Dispatcher) record(ctx context.Context, e *event, a broker.DeliveryAttempt) {
	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := d.store.LogDelivery(lctx, e.jobID, a); err != nil {
		d.log.Warn("write delivery log", "job_id", e.jobID, "err", err)
	}
}

// post makes one attempt. It returns the status (0 when no response came), the wait a
// 429 or 503 asked for, and a transport error.
func (d *Dispatcher) post(ctx context.Context, e *event, id string) (int, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.job.Webhook.URL, bytes.NewReader(e.body))
	if err != nil {
		return 0, 0, err
	}
	now := time.Now()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "foreman-webhooks")
	req.Header.Set(HeaderID, id)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	if d.key != nil {
		req.Header.Set(HeaderSignature, signature.Standard(d.key, id, now, e.body))
		req.Header.Set(HeaderForeman, signature.Foreman(d.key, id, now, e.body))
	}
	resp, err := d.cfg.Client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	var retryAfter time.Duration
	if throttled(resp.StatusCode) {
		retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)
	}
	return resp.StatusCode, retryAfter, nil
}

// throttled reports a status whose Retry-After is honoured: Standard Webhooks names 429,
// 502 and 504 as a receiver throttling, and a 503 says so too.
func throttled(status int) bool {
	switch status {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// backoff is the wait after failed attempt n: BaseDelay·2^(n-1) with ±20% jitter, or
// longer when the receiver asked for it, never above MaxDelay.
func (d *Dispatcher) backoff(n int, retryAfter time.Duration) time.Duration {
	wait := d.cfg.BaseDelay << min(n-1, 20)
	wait = time.Duration(float64(wait) * (0.8 + 0.4*rand.Float64()))
	wait = max(wait, retryAfter)
	return min(wait, d.cfg.MaxDelay)
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 when absent or unreadable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// attemptOutcome is the Config.OnAttempt outcome of a delivery attempt's record.
func attemptOutcome(outcome string) string {
	switch outcome {
	case broker.OutcomeDelivered:
		return "ok"
	case broker.OutcomeRetry:
		return "retry"
	default:
		return "gave_up"
	}
}

// failureArgs are a failed attempt's attributes for the log: its receiver, as the scheme,
// host and port of its URL alone (a webhook URL's path or query is where receivers keep
// their token: Slack's and Discord's URLs, "?token="), the status it answered (none when
// no answer came), and the error, without the URL an HTTP client's error quotes.
func failureArgs(rawURL string, status int, err error) []any {
	args := []any{"receiver", shownReceiver(rawURL)}
	if status != 0 {
		args = append(args, "status", status)
	}
	if err := withoutURL(err); err != nil {
		args = append(args, "err", err)
	}
	return args
}

// withoutURL is err without the URL an HTTP client's error (*url.Error) quotes: what
// failed, not where.
func withoutURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// shownReceiver is a webhook URL as a log line shows it: its scheme, host and port.
func shownReceiver(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return "(not a URL)"
	}
	return u.Scheme + "://" + u.Host
}

// logRetry logs a failed attempt at rawURL that will be tried again, with more
// attributes: at info the first time its receiver fails so (its status and error, the
// error's digits aside), and then once per failurelog.Every with the count of those not
// logged ("repeats"); the others at debug. A receiver down fails every attempt of every
// event sent it, up to Attempts each: one line per attempt would be thousands for a
// night's outage of a busy foreman. Each event given up is still logged (a warning with
// its job), and every attempt is in its job's delivery log.
func (d *Dispatcher) logRetry(log *slog.Logger, rawURL string, status int, err error, more ...any) {
	args := append(failureArgs(rawURL, status, err), more...)
	cause := withoutURL(err)
	if cause == nil {
		cause = errors.New("answered")
	}
	ok, repeats := d.failures.Admit(failurelog.Key(shownReceiver(rawURL)+" "+strconv.Itoa(status), cause))
	if !ok {
		log.Debug("webhook delivery failed; will retry", args...)
		return
	}
	if repeats > 0 {
		args = append(args, "repeats", repeats)
	}
	log.Info("webhook delivery failed; will retry", args...)
}
