package webhook

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// Config builds a Dispatcher.
type Config struct {
	// Store is the job store whose bucket stream is consumed. Required.
	Store *broker.Store
	// Secret signs deliveries (FOREMAN_WEBHOOK_SECRET): "whsec_<base64>" or a raw string.
	// Empty sends unsigned webhooks (webhook-id and webhook-timestamp only).
	Secret string
	// Attempts per event before giving up; default 5 (FOREMAN_WEBHOOK_ATTEMPTS).
	Attempts int
	// BaseDelay is the wait after the first failed attempt; each later wait doubles, with
	// ±20% jitter. Default 2s, so 5 attempts span about 30s.
	BaseDelay time.Duration
	// MaxDelay caps one wait, including one asked for by Retry-After. Default 5m.
	MaxDelay time.Duration
	// Timeout bounds one attempt; default 15s.
	Timeout time.Duration
	// AckWait is how long JetStream waits for an ack before redelivering an event (after
	// a crash); events being worked on are kept in progress. Default 60s.
	AckWait time.Duration
	// MaxPending caps the events held at once (and so the concurrent deliveries);
	// default 4096.
	MaxPending int
	// Consumer is the durable consumer name; default "webhooks".
	Consumer string
	// Policy decides which addresses webhooks may reach (ADR-0021); the zero value
	// refuses loopback, link-local, unspecified and multicast addresses.
	Policy Policy
	// Client sends the requests; default Policy.Client(), which follows no redirects and
	// checks every connection against the policy. A Client given here bypasses the policy
	// unless its transport dials through Policy.DialContext.
	Client *http.Client
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Attempts <= 0 {
		c.Attempts = 5
	}
	if c.BaseDelay <= 0 {
		c.BaseDelay = 2 * time.Second
	}
	if c.MaxDelay <= 0 {
		c.MaxDelay = 5 * time.Minute
	}
	if c.Timeout <= 0 {
		c.Timeout = 15 * time.Second
	}
	if c.AckWait <= 0 {
		c.AckWait = 60 * time.Second
	}
	if c.MaxPending <= 0 {
		// Events wait here through their retries (up to ~2 minutes against a dead
		// receiver), so the cap must be far above what dead receivers can fill.
		c.MaxPending = 4096
	}
	if c.Consumer == "" {
		c.Consumer = "webhooks"
	}
	if c.Client == nil {
		c.Client = c.Policy.Client()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Dispatcher fans job state events out to webhooks. Build it with New, run it with Run.
type Dispatcher struct {
	cfg   Config
	key   []byte // nil: unsigned
	store *broker.Store
	log   *slog.Logger

	mu       sync.Mutex
	closed   bool
	lanes    map[string]*lane
	inflight map[*event]struct{}
	wg       sync.WaitGroup
}

// event is one state event to deliver.
type event struct {
	jobID string
	rev   uint64 // the record revision = the stream sequence: part of webhook-id
	body  []byte
	job   *broker.Job
	msg   jetstream.Msg // nil for a manual redelivery
	// redelivered: JetStream sent it before (a crash or restart mid-delivery), so the
	// attempts already logged for it count.
	redelivered bool
}

func (e *event) webhookID() string { return e.jobID + "-" + strconv.FormatUint(e.rev, 10) }

// lane holds one job's events: they are delivered in order, one at a time.
type lane struct{ queue []*event }

// New checks the configuration; nothing runs until Run.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Store == nil {
		return nil, errors.New("webhook: Config.Store is required")
	}
	cfg.setDefaults()
	d := &Dispatcher{cfg: cfg, store: cfg.Store, log: cfg.Logger, lanes: map[string]*lane{}, inflight: map[*event]struct{}{}}
	if cfg.Secret != "" {
		k, err := Key(cfg.Secret)
		if err != nil {
			return nil, fmt.Errorf("FOREMAN_WEBHOOK_SECRET: %w", err)
		}
		d.key = k
	}
	return d, nil
}

const kvJobPrefix = "$KV." + broker.JobsBucket + ".job."

// Run consumes state events until ctx ends. Deliveries still in progress then are
// handed back (NAK): a dispatcher on the same server gets them at once, one after a
// server restart once AckWait has passed (the server keeps NAKs in memory only). Run
// returns nil on ctx's end; call it once.
func (d *Dispatcher) Run(ctx context.Context) error {
	stream, err := d.store.JetStream().Stream(ctx, "KV_"+broker.JobsBucket)
	if err != nil {
		return fmt.Errorf("webhook: stream of %s: %w", broker.JobsBucket, err)
	}
	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       d.cfg.Consumer,
		Description:   "foreman webhook deliveries",
		FilterSubject: kvJobPrefix + "*",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       d.cfg.AckWait,
		MaxDeliver:    -1, // attempts are counted per event in the delivery log
		MaxAckPending: d.cfg.MaxPending,
		Replicas:      d.store.Config().Replicas,
	})
	if err != nil {
		return fmt.Errorf("webhook: consumer %s: %w", d.cfg.Consumer, err)
	}
	sub, err := d.store.Conn().QueueSubscribe(broker.RedeliverSubject, "foreman-webhooks", func(m *nats.Msg) {
		d.onRedeliver(ctx, m)
	})
	if err != nil {
		return fmt.Errorf("webhook: subscribe %s: %w", broker.RedeliverSubject, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(min(64, d.cfg.MaxPending)))
	if err != nil {
		_ = sub.Unsubscribe()
		return fmt.Errorf("webhook: consume: %w", err)
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		d.keepInProgress(ctx)
	}()
	go func() {
		<-ctx.Done()
		it.Stop()
	}()
	d.log.Info("webhook dispatcher running", "consumer", d.cfg.Consumer, "signed", d.key != nil)

	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				break
			}
			d.log.Warn("webhook consumer", "err", err)
			continue
		}
		d.handle(ctx, msg)
	}

	_ = sub.Unsubscribe()
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	d.wg.Wait()
	<-stopped
	// The NAKs of unfinished deliveries must reach the server before the connection is
	// drained, or they wait out AckWait after the next start.
	_ = d.store.Conn().FlushTimeout(2 * time.Second)
	return nil
}

// handle acks events that need no delivery and queues the rest on their job's lane.
func (d *Dispatcher) handle(ctx context.Context, msg jetstream.Msg) {
	if op := msg.Headers().Get("KV-Operation"); op == "DEL" || op == "PURGE" {
		_ = msg.Ack()
		return
	}
	jobID := strings.TrimPrefix(msg.Subject(), kvJobPrefix)
	md, err := msg.Metadata()
	if err != nil {
		d.log.Warn("webhook event without metadata", "job_id", jobID, "err", err)
		_ = msg.Ack()
		return
	}
	job, err := broker.DecodeJob(msg.Data())
	if err != nil {
		d.log.Warn("undecodable job record; no webhook", "job_id", jobID, "err", err)
		_ = msg.Ack()
		return
	}
	// Sync jobs have a caller waiting on the connection (ADR-0014).
	if job.Sync || job.Webhook == nil || job.Webhook.URL == "" || !job.Webhook.Wants(job.State) {
		_ = msg.Ack()
		return
	}
	d.log.Debug("webhook event", "job_id", jobID, "state", job.State, "num_delivered", md.NumDelivered)
	d.enqueue(ctx, &event{
		jobID: jobID, rev: md.Sequence.Stream, body: msg.Data(), job: job, msg: msg,
		redelivered: md.NumDelivered > 1,
	})
}

// enqueue adds e to its job's lane, starting the lane when it is idle.
func (d *Dispatcher) enqueue(ctx context.Context, e *event) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	if e.msg != nil {
		d.inflight[e] = struct{}{}
	}
	l, ok := d.lanes[e.jobID]
	if !ok {
		l = &lane{}
		d.lanes[e.jobID] = l
		d.wg.Add(1)
		go d.runLane(ctx, e.jobID, l)
	}
	l.queue = append(l.queue, e)
	return true
}

// runLane delivers one job's events in order and ends when the lane is empty.
func (d *Dispatcher) runLane(ctx context.Context, jobID string, l *lane) {
	defer d.wg.Done()
	for {
		d.mu.Lock()
		if len(l.queue) == 0 {
			delete(d.lanes, jobID)
			d.mu.Unlock()
			return
		}
		e := l.queue[0]
		l.queue = l.queue[1:]
		d.mu.Unlock()

		finished := ctx.Err() == nil && d.deliver(ctx, e)
		d.settle(e, finished)
	}
}

// settle acks a finished event (delivered, refused for good, or out of attempts) and
// hands an unfinished one back for the next start.
func (d *Dispatcher) settle(e *event, finished bool) {
	if e.msg == nil {
		return
	}
	d.mu.Lock()
	delete(d.inflight, e)
	d.mu.Unlock()
	var err error
	if finished {
		err = e.msg.Ack()
	} else {
		err = e.msg.Nak()
	}
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		d.log.Warn("webhook ack", "job_id", e.jobID, "finished", finished, "err", err)
	}
}

// keepInProgress tells JetStream that held events (queued behind a slow delivery of the
// same job, or waiting for a retry) are still being worked on, so AckWait never
// redelivers them while this process lives.
func (d *Dispatcher) keepInProgress(ctx context.Context) {
	t := time.NewTicker(d.cfg.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.mu.Lock()
		held := make([]*event, 0, len(d.inflight))
		for e := range d.inflight {
			held = append(held, e)
		}
		d.mu.Unlock()
		for _, e := range held {
			_ = e.msg.InProgress()
		}
	}
}

// onRedeliver answers a RedeliverSubject request: the job's latest event is queued again
// (with its original webhook-id, so receivers can dedupe) and fresh attempts.
func (d *Dispatcher) onRedeliver(ctx context.Context, m *nats.Msg) {
	reply := func(v map[string]string) {
		data, _ := json.Marshal(v)
		_ = m.Respond(data)
	}
	id := string(m.Data)
	if err := broker.ValidateID(id); err != nil {
		reply(map[string]string{"error": err.Error()})
		return
	}
	entry, err := d.store.KV().Get(ctx, "job."+id)
	if err != nil {
		reply(map[string]string{"error": fmt.Sprintf("job %s not found", id)})
		return
	}
	job, err := broker.DecodeJob(entry.Value())
	if err != nil {
		reply(map[string]string{"error": err.Error()})
		return
	}
	if job.Sync || job.Webhook == nil || job.Webhook.URL == "" {
		reply(map[string]string{"error": "job has no webhook"})
		return
	}
	e := &event{jobID: id, rev: entry.Revision(), body: entry.Value(), job: job}
	if !d.enqueue(ctx, e) {
		reply(map[string]string{"error": "webhook dispatcher is stopping"})
		return
	}
	reply(map[string]string{"webhook_id": e.webhookID(), "state": string(job.State)})
}
