package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// RedeliverSubject asks the webhook dispatcher (request/reply, in-process only: NATS
// clients may not publish here) to send a job's latest state event again. The request
// data is the job id; the reply is {"webhook_id":"..."} or {"error":"..."}.
const RedeliverSubject = "foreman.internal.webhooks.redeliver"

// Delivery outcomes recorded per attempt.
const (
	OutcomeDelivered = "delivered" // 2xx
	OutcomeRetry     = "retry"     // failed, will be tried again
	OutcomeFailed    = "failed"    // failed, attempts exhausted
	OutcomeGone      = "gone"      // 410: the receiver wants no more events of this job
	OutcomeRefused   = "refused"   // the webhook network policy refuses the address; not retried
)

// DeliveryAttempt is one webhook delivery attempt in a job's delivery log.
type DeliveryAttempt struct {
	WebhookID string    `json:"webhook_id"`
	State     State     `json:"state"`
	Attempt   int       `json:"attempt"`
	URL       string    `json:"url"`
	Status    int       `json:"status,omitempty"`
	Error     string    `json:"error,omitempty"`
	Outcome   string    `json:"outcome"`
	Manual    bool      `json:"manual,omitempty"`
	At        time.Time `json:"at"`
}

// maxDeliveryLog bounds one job's log; the oldest attempts go first.
const maxDeliveryLog = 200

func deliveryKey(id string) string { return "dlv." + id }

// LogDelivery appends an attempt to job id's delivery log. The log lives in the jobs
// bucket under dlv.<id>, so it expires with the job TTL and is neither re-published nor
// seen by the webhook consumer.
func (s *Store) LogDelivery(ctx context.Context, id string, a DeliveryAttempt) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	k := deliveryKey(id)
	for range 20 {
		log, rev, err := s.deliveries(ctx, id)
		if err != nil {
			return err
		}
		log = append(log, a)
		if len(log) > maxDeliveryLog {
			log = log[len(log)-maxDeliveryLog:]
		}
		data, err := json.Marshal(log)
		if err != nil {
			return err
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, k, data)
		} else {
			_, err = s.kv.Update(ctx, k, data, rev)
		}
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return fmt.Errorf("broker: log delivery of %s: %w", id, storageErr(err))
		}
		return nil
	}
	return fmt.Errorf("%w: delivery log of %s kept changing", ErrConflict, id)
}

// Deliveries returns job id's delivery log, oldest first; empty when nothing was sent.
func (s *Store) Deliveries(ctx context.Context, id string) ([]DeliveryAttempt, error) {
	if err := ValidateID(id); err != nil {
		return nil, err
	}
	log, _, err := s.deliveries(ctx, id)
	return log, err
}

func (s *Store) deliveries(ctx context.Context, id string) ([]DeliveryAttempt, uint64, error) {
	e, err := s.kv.Get(ctx, deliveryKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("broker: read delivery log of %s: %w", id, err)
	}
	var log []DeliveryAttempt
	if err := json.Unmarshal(e.Value(), &log); err != nil {
		return nil, 0, fmt.Errorf("broker: decode delivery log of %s: %w", id, err)
	}
	return log, e.Revision(), nil
}
