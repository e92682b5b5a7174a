package webhook

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// deliver sends e until the receiver takes it, refuses it for good (410) or the attempts
// run out; it reports whether the event is finished. It returns false only when ctx ended
// mid-way, so the event goes back to JetStream. Failures are logged, never returned: a
// webhook never changes its job (ADR-0005).
func (d *Dispatcher) deliver(ctx context.Context, e *event) bool {
	id := e.webhookID()
	log := d.log.With("job_id", e.jobID, "model", e.job.Model, "state", e.job.State, "webhook_id", id)
	start := 1
	if e.msg != nil { // manual redeliveries ignore history: the operator asked for them
		past, err := d.store.Deliveries(ctx, e.jobID)
		if err != nil {
			log.Warn("read delivery log", "err", err)
		}
		for _, a := range past {
			if a.Outcome == broker.OutcomeGone && !a.Manual {
				log.Debug("receiver answered 410 before; event dropped")
				return true
			}
			if e.redelivered && a.WebhookID == id && !a.Manual {
				if a.Outcome == broker.OutcomeDelivered {
					return true // delivered, but the ack was lost
				}
				start = max(start, a.Attempt+1)
			}
		}
	}
	for attempt := start; attempt <= d.cfg.Attempts; attempt++ {
		status, retryAfter, err := d.post(ctx, e, id)
		if ctx.Err() != nil {
			return false
		}
		rec := broker.DeliveryAttempt{
			WebhookID: id, State: e.job.State, Attempt: attempt, URL: e.job.Webhook.URL,
			Status: status, Manual: e.msg == nil, At: time.Now().UTC(),
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
		case attempt == d.cfg.Attempts:
			rec.Outcome = broker.OutcomeFailed
		default:
			rec.Outcome = broker.OutcomeRetry
		}
		d.record(ctx, e, rec)
		switch rec.Outcome {
		case broker.OutcomeDelivered:
			log.Debug("webhook delivered", "attempt", attempt, "status", status)
			return true
		case broker.OutcomeGone:
			log.Info("webhook receiver answered 410; no more events for this job", "attempt", attempt)
			return true
		case broker.OutcomeFailed:
			log.Warn("webhook delivery failed; giving up", "attempt", attempt, "status", status, "err", err)
			return true
		case broker.OutcomeRefused:
			log.Warn("webhook address refused by the network policy; not retried", "err", err)
			return true
		}
		wait := d.backoff(attempt, retryAfter)
		log.Info("webhook delivery failed; will retry", "attempt", attempt, "status", status, "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
	return true // attempts already spent before a restart
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
		req.Header.Set(HeaderSignature, "v1,"+b64(mac(d.key, id, now.Unix(), e.body)))
		req.Header.Set(HeaderForeman, ForemanSignature(d.key, e.body))
	}
	resp, err := d.cfg.Client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // let the connection be reused
	var retryAfter time.Duration
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), now)
	}
	return resp.StatusCode, retryAfter, nil
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
