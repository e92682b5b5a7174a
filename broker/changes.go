package broker

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// jobsStream is the stream behind the JobsBucket KV bucket, artifactsStream the one
// behind the ArtifactsBucket object store, and kvJobPrefix the subject of a job record's
// writes in jobsStream.
const (
	jobsStream      = "KV_" + JobsBucket
	artifactsStream = "OBJ_" + ArtifactsBucket
	kvJobPrefix     = "$KV." + JobsBucket + ".job."
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
	// PullExpiry is how long one pull request waits for changes; default nats.go's, 30s.
	PullExpiry time.Duration
}

// ChangeConsumer takes every write of every job record, from the first one kept, each
// until acked (at least once, in order per job). See Store.ConsumeChanges.
type ChangeConsumer struct {
	nc   *nats.Conn
	open func(ctx context.Context) (jetstream.MessagesContext, jetstream.Consumer, jetstream.Stream, error)
	// stopped is closed by Stop; halt is canceled with it, to end a Next waiting for the
	// iterator (a drained one waits for its flush, up to 10 s while disconnected).
	stopped  chan struct{}
	stopOnce sync.Once
	halt     context.Context
	unhalt   context.CancelFunc

	mu     sync.Mutex
	it     jetstream.MessagesContext // nil while it must be made again
	cons   jetstream.Consumer        // it's consumer
	stream jetstream.Stream          // cons's stream
	// pin is the pin id (Nats-Pin-Id) of the last change the server sent this process:
	// Release gives the pin up only while it is still this one.
	pin string
	// given are the changes handed back (Change.GiveBack), for Release to offer again.
	given []jetstream.Msg
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
	from         *ChangeConsumer
}

// Ack marks the change handled.
func (c *Change) Ack() error { return c.msg.Ack() }

// InProgress tells the server the change is still being handled: its AckWait starts
// again.
func (c *Change) InProgress() error { return c.msg.InProgress() }

// NakWithDelay offers the change again after delay.
func (c *Change) NakWithDelay(delay time.Duration) error { return c.msg.NakWithDelay(delay) }

// GiveBack leaves the change, not handled, to its consumer's Release, which offers it
// again at once, in stream order with the others this process still holds, before it
// gives the consumer up: for a change Next returned that a stop leaves unhandled.
func (c *Change) GiveBack() {
	c.from.mu.Lock()
	defer c.from.mu.Unlock()
	c.from.given = append(c.from.given, c.msg)
}

// ConsumeChanges creates or updates the durable consumer cfg.Durable of job record changes
// and starts taking them. Of several processes consuming it, one at a time takes the
// changes (a pinned client, on nats-server 2.11 and later). Stop it when done, and
// Release it at a stop in order.
func (s *Store) ConsumeChanges(ctx context.Context, cfg ChangeConsumerConfig) (*ChangeConsumer, error) {
	c := &ChangeConsumer{nc: s.nc, stopped: make(chan struct{})}
	c.halt, c.unhalt = context.WithCancel(context.Background())
	c.open = func(ctx context.Context) (jetstream.MessagesContext, jetstream.Consumer, jetstream.Stream, error) {
		stream, err := s.js.Stream(ctx, jobsStream)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("stream of %s: %w", JobsBucket, err)
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
			// One process at a time takes the changes, the others' pulls wait: a job's
			// changes split between foremen would go out of order (ADR-0052). A pinned
			// process that stops pulling for PinnedTTL (2m) gives way to another; one that
			// stops in order gives the pin up at once (Release).
			PriorityPolicy: jetstream.PriorityPolicyPinned,
			PriorityGroups: []string{changesGroup},
		})
		if err != nil {
			return nil, nil, nil, fmt.Errorf("consumer %s: %w", cfg.Durable, err)
		}
		opts := []jetstream.PullMessagesOpt{jetstream.PullMaxMessages(min(64, cfg.MaxAckPending))}
		if cfg.PullExpiry > 0 {
			opts = append(opts, jetstream.PullExpiry(cfg.PullExpiry))
		}
		// A server before 2.11 knows no priority groups and drops them from the config:
		// there every process takes changes, as before ADR-0052.
		if slices.Contains(cons.CachedInfo().Config.PriorityGroups, changesGroup) {
			opts = append(opts, jetstream.PullPriorityGroup(changesGroup))
		}
		it, err := cons.Messages(opts...)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("consume: %w", err)
		}
		return it, cons, stream, nil
	}
	it, cons, stream, err := c.open(ctx)
	if err != nil {
		return nil, err
	}
	c.it, c.cons, c.stream = it, cons, stream
	return c, nil
}

// changesGroup is the priority group of change consumers: one process is pinned to it.
const changesGroup = "foreman"

// reopenPause is the wait between tries to make the consumer again.
const reopenPause = time.Second

// Next waits for the next change; after Stop it returns ErrChangesStopped. A consumer
// that went away (deleted by an operator, lost by a cluster) is made again, from where
// the deleted one stood for a durable one kept elsewhere or from the oldest change kept:
// its changes come at least once. An error making it is returned after a pause, and the
// next call tries again.
func (c *ChangeConsumer) Next() (*Change, error) {
	for {
		it, err := c.iterator()
		if err != nil {
			return nil, err
		}
		msg, err := it.Next(jetstream.NextContext(c.halt))
		if err == nil {
			c.notePin(msg)
			select {
			case <-c.stopped: // come in after Stop: Release offers it again
				c.mu.Lock()
				c.given = append(c.given, msg)
				c.mu.Unlock()
				return nil, ErrChangesStopped
			default:
			}
			return c.change(msg), nil
		}
		select {
		case <-c.stopped:
			return nil, ErrChangesStopped
		default:
		}
		// The server tells of a deleted consumer only the pulls waiting then: with none
		// waiting (the caller away longer than a pull's expiry), the iterator only misses
		// its heartbeats from then on, and a look at the consumer finds it gone.
		if errors.Is(err, jetstream.ErrMsgIteratorClosed) || errors.Is(err, jetstream.ErrConsumerDeleted) ||
			errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrNoHeartbeat) && c.gone() {
			it.Stop()
			c.mu.Lock()
			if c.it == it {
				c.it = nil
			}
			c.mu.Unlock()
			continue
		}
		select {
		case <-c.stopped: // a Stop during the look at the consumer
			return nil, ErrChangesStopped
		default:
		}
		return nil, err
	}
}

// gone reports whether the current consumer no longer exists on the server; a Stop ends
// the look.
func (c *ChangeConsumer) gone() bool {
	c.mu.Lock()
	cons := c.cons
	c.mu.Unlock()
	if cons == nil {
		return false
	}
	ctx, cancel := c.untilStop(10 * time.Second)
	defer cancel()
	_, err := cons.Info(ctx)
	return errors.Is(err, jetstream.ErrConsumerNotFound)
}

// untilStop is a context that ends after limit or at Stop.
func (c *ChangeConsumer) untilStop(limit time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	go func() {
		select {
		case <-c.stopped:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// iterator is the current message iterator, made again when it went away.
func (c *ChangeConsumer) iterator() (jetstream.MessagesContext, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.it != nil {
		return c.it, nil
	}
	select {
	case <-c.stopped:
		return nil, ErrChangesStopped
	default:
	}
	ctx, cancel := c.untilStop(10 * time.Second)
	defer cancel()
	it, cons, stream, err := c.open(ctx)
	if err == nil {
		select {
		case <-c.stopped:
			// Its pulls may have been answered already (and pinned it): Release takes
			// what they brought.
			c.it, c.cons, c.stream = it, cons, stream
			it.Drain()
			return nil, ErrChangesStopped
		default:
		}
	}
	if err != nil {
		select {
		case <-c.stopped:
			return nil, ErrChangesStopped
		case <-time.After(reopenPause):
		}
		return nil, fmt.Errorf("broker: make the change consumer again: %w", err)
	}
	c.it, c.cons, c.stream = it, cons, stream
	return it, nil
}

// notePin keeps the pin id msg came with.
func (c *ChangeConsumer) notePin(msg jetstream.Msg) {
	if pin := msg.Headers().Get(pinHeader); pin != "" {
		c.mu.Lock()
		c.pin = pin
		c.mu.Unlock()
	}
}

// pinHeader carries, on each message of a pinned consumer, the pin id of the client the
// server sent it to.
const pinHeader = "Nats-Pin-Id"

func (c *ChangeConsumer) change(msg jetstream.Msg) *Change {
	ch := &Change{JobID: strings.TrimPrefix(msg.Subject(), kvJobPrefix), Data: msg.Data(), msg: msg, from: c,
		Refresh: msg.Headers().Get(HeaderRefresh) != "", SameState: msg.Headers().Get(HeaderSameState) != ""}
	if op := msg.Headers().Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		ch.Deleted, ch.Data = true, nil
		return ch
	}
	md, err := msg.Metadata()
	if err != nil {
		ch.MetaErr = err
		return ch
	}
	ch.Rev, ch.NumDelivered = md.Sequence.Stream, md.NumDelivered
	return ch
}

// Stop ends Next and the pulls; safe to call from another goroutine and twice. The
// changes pulled but not yet returned stay for Release (after a Stop without one they
// come again after AckWait, and the pin stays until its TTL).
func (c *ChangeConsumer) Stop() {
	c.stopOnce.Do(func() {
		close(c.stopped)
		c.unhalt()
	})
	c.mu.Lock()
	it := c.it
	c.mu.Unlock()
	switch {
	case it == nil:
	case c.nc.IsConnected():
		it.Drain()
	default:
		// Nothing reaches the server now, and a drain would wait out its flush: what
		// the iterator holds comes again after AckWait.
		it.Stop()
	}
}

// Release gives the consumer up at a stop in order, so that another process (or this
// one's next start) takes the changes at once rather than after the pin's TTL (2m,
// ADR-0052). Call it after Stop, once every call of Next has returned and every change
// it returned is acked, NAKed or handed back (Change.GiveBack), and before the
// connection is drained. While the connection is down it does nothing but say so. In order:
//  1. it waits for the pulls to end (the server sends this process nothing more) and
//     takes the changes they brought that Next did not return;
//  2. it looks at the consumer, which drops this process's pull requests at the server;
//  3. it NAKs those changes and the ones handed back, in stream order, the last waiting
//     for the server's answer (the consumer applies acks and NAKs from a queue, later
//     than a flush returns): they are then offered before any later change;
//  4. it unpins the consumer if this process still holds the pin (the server unpins
//     whichever client holds it: a process that is not pinned leaves the pin alone).
//
// ctx bounds it all; changes left then come again after AckWait, and the pin is left to
// its TTL.
func (c *ChangeConsumer) Release(ctx context.Context) error {
	c.Stop()
	if !c.nc.IsConnected() {
		// Neither the NAKs nor the unpin would reach the server: the changes come again
		// after AckWait and the pin goes at its TTL, as after a crash.
		return errors.New("not connected to NATS: the changes held come again after AckWait, the pin goes at its TTL")
	}
	c.mu.Lock()
	it, cons, stream := c.it, c.cons, c.stream
	c.mu.Unlock()
	var held []jetstream.Msg
	if it != nil {
		for {
			// Drained, the iterator returns what is buffered, then ends once the server
			// has the unsubscription.
			msg, err := it.Next(jetstream.NextContext(ctx))
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) || ctx.Err() != nil {
				break
			}
			if err != nil {
				continue // a status (a deleted consumer) ends the iterator at the next call
			}
			c.notePin(msg)
			held = append(held, msg)
		}
	}
	c.mu.Lock()
	held = append(held, c.given...)
	c.given = nil
	pin := c.pin
	c.mu.Unlock()
	var errs []error
	// A look at the consumer also makes the server drop this process's pull requests,
	// now without interest: one still listed when a NAKed event is up, with no other
	// pull that may take it, sends the event to the back of the redelivery queue.
	var info *jetstream.ConsumerInfo
	if cons != nil {
		var err error
		if info, err = cons.Info(ctx); err != nil {
			errs = append(errs, fmt.Errorf("consumer info: %w", err))
		}
	}
	slices.SortFunc(held, func(a, b jetstream.Msg) int { return cmp.Compare(streamSeq(a), streamSeq(b)) })
	for i, msg := range held {
		if i < len(held)-1 {
			if err := msg.Nak(); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		// The server applies acks and NAKs from a queue of the consumer's, in order, after
		// a flush has returned: the last NAK waits for its answer, so that all of them are
		// applied (the events on the redelivery queue) before the pin goes.
		if _, err := c.nc.RequestWithContext(ctx, msg.Reply(), []byte("-NAK")); err != nil {
			errs = append(errs, fmt.Errorf("nak: %w", err))
		}
	}
	if err := c.nc.FlushWithContext(ctx); err != nil {
		return errors.Join(append(errs, fmt.Errorf("flush: %w", err))...)
	}
	if pin == "" || info == nil {
		return errors.Join(errs...) // never pinned (or a server before 2.11)
	}
	for _, g := range info.PriorityGroups {
		if g.Group == changesGroup && g.PinnedClientID == pin {
			// Between the look and the unpin the pin changes hands only at its TTL
			// (this process pulls no more) or by an operator's unpin.
			if err := stream.UnpinConsumer(ctx, info.Name, changesGroup); err != nil {
				errs = append(errs, fmt.Errorf("unpin: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// streamSeq is msg's stream sequence; 0 when the server sent none.
func streamSeq(msg jetstream.Msg) uint64 {
	md, err := msg.Metadata()
	if err != nil {
		return 0
	}
	return md.Sequence.Stream
}

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

// Redeliver asks the webhook dispatcher to send job id's latest state event its webhook
// wants again (see LatestStateEvent).
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

// GetRaw returns job id's record as stored, and its revision. Like Get, it is tried
// again through a cluster's leader election (a direct get no replica answers yet, "no
// responders"), for up to Config.RetryWindow: tried once, a manual redelivery asked then
// was told the job was not found.
func (s *Store) GetRaw(ctx context.Context, id string) ([]byte, uint64, error) {
	if err := ValidateID(id); err != nil {
		return nil, 0, err
	}
	var e jetstream.KeyValueEntry
	err := s.retry(ctx, func(ctx context.Context) error {
		var err error
		e, err = s.kvGet(ctx, jobKey(id))
		return err
	})
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return nil, 0, fmt.Errorf("broker: get %s: %w", id, err)
	}
	return e.Value(), e.Revision(), nil
}

// ErrNoStateEvent is LatestStateEvent finding no kept write of a job that is a state
// event in a state asked for.
var ErrNoStateEvent = errors.New("no such state event kept")

// LatestStateEvent returns the newest kept write of job id's record that was a state
// event (its create, or a write that changed its state or attempt: not a refresh, nor a
// write that kept both) in a state want accepts, as written, and its revision: the write
// a webhook-id names. The bucket keeps a record's last 16 writes. ErrNoStateEvent when
// none of them is one; ErrNotFound when the job is not found.
func (s *Store) LatestStateEvent(ctx context.Context, id string, want func(State) bool) ([]byte, uint64, error) {
	if err := ValidateID(id); err != nil {
		return nil, 0, err
	}
	history, err := s.kv.History(ctx, jobKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("broker: history of %s: %w", id, err)
	}
	for _, e := range slices.Backward(history) {
		if e.Operation() != jetstream.KeyValuePut {
			continue
		}
		j, err := DecodeJob(e.Value())
		if err != nil || !want(j.State) {
			continue
		}
		// Only the write's headers tell a refresh, or a write that kept the state, from
		// the write that entered it.
		msg, err := s.jobs.GetMsg(ctx, e.Revision())
		if err != nil {
			return nil, 0, fmt.Errorf("broker: read %s at revision %d: %w", id, e.Revision(), err)
		}
		if msg.Header.Get(HeaderRefresh) != "" || msg.Header.Get(HeaderSameState) != "" {
			continue
		}
		return e.Value(), e.Revision(), nil
	}
	return nil, 0, fmt.Errorf("%w: job %s", ErrNoStateEvent, id)
}

// JobStreams are the streams a submit and a job's run write: the job records (the jobs
// bucket's stream), the queue, and the artifacts (a large submit's body, every job's
// result.json). See Config.WriteFault.
func JobStreams() []string { return []string{jobsStream, QueueStream, artifactsStream} }
