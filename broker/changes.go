package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// jobsStream is the stream behind the JobsBucket KV bucket, and kvJobPrefix the subject
// of a job record's writes in it.
const (
	jobsStream  = "KV_" + JobsBucket
	kvJobPrefix = "$KV." + JobsBucket + ".job."
)

// ErrConnClosed is the error of an ack or NAK on a closed connection (a stop under way).
var ErrConnClosed = nats.ErrConnectionClosed

// ErrChangesStopped ends ChangeConsumer.Next after Stop.
var ErrChangesStopped = errors.New("broker: change consumer stopped")

// ChangeConsumerConfig names and sizes a durable consumer of job record changes.
type ChangeConsumerConfig struct {
	Durable     string
	Description string
	// AckWait is how long the server waits for an ack before offering a change again.
	AckWait time.Duration
	// MaxAckPending caps the changes taken but not yet acked.
	MaxAckPending int
}

// ChangeConsumer takes every write of every job record, from the first one kept, each
// until acked (at least once, in order per job). See Store.ConsumeChanges.
type ChangeConsumer struct {
	nc *nats.Conn
	it jetstream.MessagesContext
}

// Change is one write of a job record.
type Change struct {
	JobID string
	// Deleted is a deletion or purge of the record: Data is empty.
	Deleted bool
	// Refresh is a rewrite of the same record by Store.Refresh (HeaderRefresh): no news.
	Refresh bool
	// SameState is a write that kept the state and attempt (HeaderSameState).
	SameState bool
	Data      []byte
	// Rev is the record's revision (the stream sequence); NumDelivered counts the
	// offers of this change. Both are zero when MetaErr says the server sent none.
	Rev          uint64
	NumDelivered uint64
	MetaErr      error
	msg          jetstream.Msg
}

// Ack marks the change handled.
func (c *Change) Ack() error { return c.msg.Ack() }

// NakWithDelay offers the change again after delay.
func (c *Change) NakWithDelay(delay time.Duration) error { return c.msg.NakWithDelay(delay) }

// ConsumeChanges creates or updates the durable consumer cfg.Durable of job record changes
// and starts taking them. Stop it when done.
func (s *Store) ConsumeChanges(ctx context.Context, cfg ChangeConsumerConfig) (*ChangeConsumer, error) {
	stream, err := s.js.Stream(ctx, jobsStream)
	if err != nil {
		return nil, fmt.Errorf("stream of %s: %w", JobsBucket, err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       cfg.Durable,
		Description:   cfg.Description,
		FilterSubject: kvJobPrefix + "*",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: cfg.MaxAckPending,
		Replicas:      s.cfg.Replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("consumer %s: %w", cfg.Durable, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(min(64, cfg.MaxAckPending)))
	if err != nil {
		return nil, fmt.Errorf("consume: %w", err)
	}
	return &ChangeConsumer{nc: s.nc, it: it}, nil
}

// Next waits for the next change; after Stop it returns ErrChangesStopped.
func (c *ChangeConsumer) Next() (*Change, error) {
	msg, err := c.it.Next()
	if err != nil {
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
			return nil, ErrChangesStopped
		}
		return nil, err
	}
	ch := &Change{JobID: strings.TrimPrefix(msg.Subject(), kvJobPrefix), Data: msg.Data(), msg: msg,
		Refresh: msg.Headers().Get(HeaderRefresh) != "", SameState: msg.Headers().Get(HeaderSameState) != ""}
	if op := msg.Headers().Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		ch.Deleted, ch.Data = true, nil
		return ch, nil
	}
	md, err := msg.Metadata()
	if err != nil {
		ch.MetaErr = err
		return ch, nil
	}
	ch.Rev, ch.NumDelivered = md.Sequence.Stream, md.NumDelivered
	return ch, nil
}

// Stop ends Next; safe to call from another goroutine and twice.
func (c *ChangeConsumer) Stop() { c.it.Stop() }

// Flush waits, up to timeout, until the server has the acks and NAKs sent so far: NAKs
// lost in a stop wait out AckWait after the next start.
func (c *ChangeConsumer) Flush(timeout time.Duration) { _ = c.nc.FlushTimeout(timeout) }

// RedeliverReply is the webhook dispatcher's answer on RedeliverSubject.
type RedeliverReply struct {
	Error     string `json:"error,omitempty"`
	State     string `json:"state,omitempty"`
	WebhookID string `json:"webhook_id,omitempty"`
}

// ErrNoDispatcher is a redelivery request nobody answers: no webhook dispatcher runs.
var ErrNoDispatcher = errors.New("the webhook dispatcher is not running")

// ErrBadReply is a redelivery reply that is not a RedeliverReply.
var ErrBadReply = errors.New("bad redeliver reply")

// Redeliver asks the webhook dispatcher to send job id's latest state event again.
func (s *Store) Redeliver(ctx context.Context, id string) (RedeliverReply, error) {
	var reply RedeliverReply
	msg, err := s.nc.RequestWithContext(ctx, RedeliverSubject, []byte(id))
	if errors.Is(err, nats.ErrNoResponders) {
		return reply, ErrNoDispatcher
	}
	if err != nil {
		return reply, err
	}
	if err := json.Unmarshal(msg.Data, &reply); err != nil {
		return reply, fmt.Errorf("%w: %v", ErrBadReply, err)
	}
	return reply, nil
}

// ServeRedeliver answers Redeliver requests with answer (the webhook dispatcher's side),
// in a queue group with every other dispatcher. stop ends it.
func (s *Store) ServeRedeliver(answer func(id string) RedeliverReply) (stop func(), err error) {
	sub, err := s.nc.QueueSubscribe(RedeliverSubject, "foreman-webhooks", func(m *nats.Msg) {
		data, _ := json.Marshal(answer(string(m.Data)))
		_ = m.Respond(data)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", RedeliverSubject, err)
	}
	return func() { _ = sub.Unsubscribe() }, nil
}

// GetRaw returns job id's record as stored, and its revision.
func (s *Store) GetRaw(ctx context.Context, id string) ([]byte, uint64, error) {
	if err := ValidateID(id); err != nil {
		return nil, 0, err
	}
	e, err := s.kvGet(ctx, jobKey(id))
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return nil, 0, fmt.Errorf("broker: get %s: %w", id, err)
	}
	return e.Value(), e.Revision(), nil
}

// JobStreams are the streams a submit and a job's run write: the job records (the jobs
// bucket's stream) and the queue. See Config.WriteFault.
func JobStreams() []string { return []string{jobsStream, QueueStream} }
