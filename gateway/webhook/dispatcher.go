package webhook

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/publicsuffix"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/failurelog"
)

// Store is what the dispatcher uses of the job store: a *broker.Store. Tests stand a
// store in front of it that fails as a NATS cluster electing a leader does.
type Store interface {
	ConsumeChanges(ctx context.Context, cfg broker.ChangeConsumerConfig) (*broker.ChangeConsumer, error)
	ClaimPendingDeliveries(ctx context.Context, skip func(jobID string, rev uint64) bool) (claimed []broker.PendingDelivery, failed []broker.PendingRef, err error)
	ServeRedeliver(answer func(id string) broker.RedeliverReply) (stop func(), err error)
	AddPendingDelivery(ctx context.Context, p broker.PendingDelivery) (rev uint64, created bool, err error)
	PendingDelivery(ctx context.Context, id string, rev uint64) (*broker.PendingDelivery, error)
	UpdatePendingDelivery(ctx context.Context, p broker.PendingDelivery) (uint64, error)
	BootID() string
	FinishPendingDelivery(ctx context.Context, id string, rev uint64) error
	Deliveries(ctx context.Context, id string) ([]broker.DeliveryAttempt, error)
	LogDelivery(ctx context.Context, id string, a broker.DeliveryAttempt) error
	GetRaw(ctx context.Context, id string) ([]byte, uint64, error)
	LatestStateEvent(ctx context.Context, id string, want func(broker.State) bool) ([]byte, uint64, error)
}

var _ Store = (*broker.Store)(nil)

// DefaultAttempts is Config.Attempts' default: with the default delays (2 s doubling to
// 1 h) an event is tried for about 5 hours, so a receiver down for a deploy, a restart or
// a night is told when it is back, as Standard Webhooks' schedule (retries over a day)
// intends; the job TTL (24 h by default) bounds it too (ADR-0092).
const DefaultAttempts = 16

// Config builds a Dispatcher.
type Config struct {
	// Store is the job store whose bucket stream is consumed. Required.
	Store Store
	// Secret signs deliveries (FOREMAN_WEBHOOK_SECRET): "whsec_<base64>" or a raw string.
	// Empty sends unsigned webhooks (webhook-id and webhook-timestamp only).
	Secret string
	// Attempts per event before giving up; default 16 (FOREMAN_WEBHOOK_ATTEMPTS).
	Attempts int
	// BaseDelay is the wait after the first failed attempt; each later wait doubles, with
	// ±20% jitter. Default 2s, so 16 attempts span about 5 hours (ADR-0092).
	BaseDelay time.Duration
	// MaxDelay caps one wait, including one asked for by Retry-After. Default 1h: a
	// receiver that is back is served within the hour.
	MaxDelay time.Duration
	// Timeout bounds one attempt; default 15s.
	Timeout time.Duration
	// AckWait is how long JetStream waits for an ack before offering an event again
	// (after a crash between taking an event and storing it). Default 60s, and serve
	// leaves it so (not FOREMAN_ACK_WAIT, the queue's): an event is acked once stored as
	// a pending delivery, before its first attempt, so no send, however slow its
	// receiver, runs under it; a delivery's attempts belong to the foreman that stored it
	// (ADR-0052).
	AckWait time.Duration
	// MaxPending caps the events taken from the stream but not yet stored as pending
	// deliveries; default 4096. Events waiting for a retry are acked and do not count.
	MaxPending int
	// PerReceiver caps the attempts in flight to one receiver (see receiverOf: a host's
	// registrable domain or its address, and the port), so a receiver that hangs ties
	// up that many connections, not one per job; as many more lanes may wait for a
	// slot. At most 4 × PerReceiver jobs' lanes name a receiver (laneCap); the others'
	// events wait in the store only, taken up as lanes free. Default 16.
	PerReceiver int
	// MaxInFlight caps the attempts in flight to all receivers together (ADR-0122):
	// receivers cost an attacker little to multiply (a port, an IPv4 address that drops
	// packets), and each attempt holds a connection. An attempt beyond it waits, holding
	// its receiver's slot but no body and no connection, for a place; places are given
	// in the order they were asked for. Default 256.
	MaxInFlight int
	// busyPause is how long an event parked on a busy receiver waits at most before it
	// asks again, should no slot's release wake it first; default busyPause.
	busyPause time.Duration
	// Consumer is the durable consumer name; default "webhooks".
	Consumer string
	// ClaimEvery is how often the dispatcher looks for pending deliveries whose foreman
	// is gone (on a NATS shared by several foremen) and adopts them; default 30s.
	ClaimEvery time.Duration
	// Policy decides which addresses webhooks may reach (ADR-0021); the zero value
	// refuses loopback, link-local, unspecified and multicast addresses.
	Policy Policy
	// Client sends the requests; default Policy.Client(), which follows no redirects and
	// checks every connection against the policy. A Client given here bypasses the policy
	// unless its transport dials through Policy.DialContext.
	Client *http.Client
	// OnAttempt, when set, is told the outcome of every delivery attempt: "ok" (2xx),
	// "retry" (failed, tried again later) or "gave_up" (attempts spent, refused by the
	// policy, or 410 from the receiver). It must not block.
	OnAttempt func(outcome string)
	Logger    *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Attempts <= 0 {
		c.Attempts = DefaultAttempts
	}
	if c.BaseDelay <= 0 {
		c.BaseDelay = 2 * time.Second
	}
	if c.MaxDelay <= 0 {
		c.MaxDelay = time.Hour
	}
	if c.Timeout <= 0 {
		c.Timeout = 15 * time.Second
	}
	if c.AckWait <= 0 {
		c.AckWait = 60 * time.Second
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 4096
	}
	if c.PerReceiver <= 0 {
		c.PerReceiver = 16
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 256
	}
	if c.busyPause <= 0 {
		c.busyPause = busyPause
	}
	if c.Consumer == "" {
		c.Consumer = "webhooks"
	}
	if c.ClaimEvery <= 0 {
		c.ClaimEvery = 30 * time.Second
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
	store Store
	log   *slog.Logger

	mu     sync.Mutex
	closed bool
	lanes  map[string]*lane
	known  map[string]bool // webhook-ids of the stored pending deliveries in the lanes
	// intake holds the webhook-ids of the events being stored and queued (handle): a
	// claim leaves them to it, or it would queue one a second time.
	intake map[string]bool
	// finishing holds the webhook-ids of the events finish is removing from the store:
	// no longer known (a redelivery is queued again), but a claim reading the entry
	// before it is gone would queue it a second time.
	finishing map[string]bool
	// manual holds the webhook-id of each job's manual redelivery in its lane: a job has
	// at most one, so redelivery requests in a loop cannot pile up events in memory.
	manual map[string]string
	// held counts the lanes of each receiver (lane.receiver), at most laneCap; spills
	// names the receivers with events left in the store beyond that, spilled the jobs
	// (spill.go); spillSeq counts the spills.
	held     map[string]int
	spills   map[string]*spill
	spilled  map[string]spilledJob
	spillSeq uint64
	nudge    chan struct{} // wakes claimLoop: a receiver with spilled events has room
	// claims logs the claims' failures to read the store: during a NATS outage, once
	// per failurelog.Every, and once when a claim reads it again.
	claims failurelog.Loop
	// failures lets the line of a receiver's failed attempts that will be retried
	// through once per failurelog.Every for each way it fails (logRetry).
	failures failurelog.Window
	wg       sync.WaitGroup

	slotsMu sync.Mutex
	slots   map[string]*receiverSlots // by receiver; removed when unused
	// places holds a token per attempt in flight, MaxInFlight at most (ADR-0122);
	// globalWaiting counts the attempts that hold their receiver's slot and wait for one.
	places        chan struct{}
	globalWaiting int
	slotsClosed   bool // stopped: no backstop is armed
}

// receiverSlots bounds the attempts in flight to one receiver, and the lanes waiting.
type receiverSlots struct {
	ch      chan struct{} // a token per attempt in flight
	waiting int           // lanes waiting for a token
	users   int           // lanes holding or waiting for a token
	// parked are the jobs whose lanes found the receiver busy (every token taken,
	// PerReceiver lanes waiting) and stopped, oldest first; each release of a token
	// wakes the oldest (parkedSet: each job once).
	parked    []string
	parkedSet map[string]bool
	// backstop wakes the lane parked longest should no release do it first: one timer
	// for the receiver, not one per parked lane (armBackstop).
	backstop *time.Timer
}

// event is one state event to deliver. A stored event (a pending delivery in the store)
// reads its body from there for each attempt; a manual redelivery carries it.
type event struct {
	jobID    string
	rev      uint64 // the record revision = the stream sequence: part of webhook-id
	srev     uint64 // the pending delivery's revision as this dispatcher read or wrote it last
	attempts int    // attempts made so far
	nextAt   time.Time
	// waitRead: nextAt has taken the stored delivery's retry wait (storedNextAt), which
	// is not taken again: a wait cut to MaxDelay would be cut from a later now each time.
	waitRead bool
	manual   bool   // a manual redelivery: in memory only, with fresh attempts
	receiver string // receiverOf its webhook URL: whose slots its attempts take
	parked   bool   // it waits for its receiver's slot, not for a retry: a release (or the receiver's backstop) wakes it

	// Set for the attempt being made.
	body []byte
	job  *broker.Job
}

func (e *event) webhookID() string { return e.jobID + "-" + strconv.FormatUint(e.rev, 10) }

// lane holds one job's events: they are delivered in order, one at a time. While its
// first event waits for a retry, no goroutine runs for the lane; a timer wakes it.
type lane struct {
	queue    []*event
	receiver string // whose lanes it counts in (Dispatcher.held)
	running  bool
	timer    *time.Timer // a retry's wait; none while parked on a busy receiver
	// unparked: a release woke the lane while it was still running on its way to
	// stopping, parked: it tries again at once instead.
	unparked bool
}

// New checks the configuration; nothing runs until Run.
func New(cfg Config) (*Dispatcher, error) {
	if cfg.Store == nil {
		return nil, errors.New("webhook: Config.Store is required")
	}
	cfg.setDefaults()
	d := &Dispatcher{cfg: cfg, store: cfg.Store, log: cfg.Logger, lanes: map[string]*lane{}, known: map[string]bool{}, intake: map[string]bool{}, finishing: map[string]bool{}, manual: map[string]string{},
		held: map[string]int{}, spills: map[string]*spill{}, spilled: map[string]spilledJob{}, nudge: make(chan struct{}, 1), slots: map[string]*receiverSlots{},
		places: make(chan struct{}, cfg.MaxInFlight)}
	if cfg.Secret != "" {
		k, err := Key(cfg.Secret)
		if err != nil {
			return nil, fmt.Errorf("FOREMAN_WEBHOOK_SECRET: %w", err)
		}
		d.key = k
	}
	return d, nil
}

// intakeShards is the number of events stored at once.
const intakeShards = 8

// Run consumes state events until ctx ends. Each event to deliver is stored as a pending
// delivery before its message is acked, so retries hold no message (ADR-0022); the
// pending deliveries whose owner is gone (an earlier run of this foreman, or another
// foreman that died) are resumed first, and adopted every ClaimEvery after (ADR-0052).
// A NATS cluster that cannot answer at start (a leader election, a slow server) is
// waited for, with a warning at each try; any other error at start is returned.
// Attempts in flight when ctx ends are abandoned unrecorded and made again by whoever
// holds their pending delivery next. Run returns nil on ctx's end; call it once.
func (d *Dispatcher) Run(ctx context.Context) error {
	changes, pending, failed, err := d.start(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("webhook: %w", err)
	}
	d.resume(ctx, pending, failed)
	stopRedeliver, err := d.store.ServeRedeliver(func(id string) broker.RedeliverReply {
		return d.onRedeliver(ctx, id)
	})
	if err != nil {
		d.stop()
		d.release(changes)
		return fmt.Errorf("webhook: %w", err)
	}
	go func() {
		<-ctx.Done()
		changes.Stop()
	}()
	claims := make(chan struct{})
	go func() {
		defer close(claims)
		d.claimLoop(ctx)
	}()
	defer func() { <-claims }()
	d.log.Info("webhook dispatcher running", "consumer", d.cfg.Consumer, "signed", d.key != nil, "resumed", len(pending))

	// Storing an event is a round trip to JetStream: several run at once, a job's events
	// always on the same shard, so they reach its lane in order.
	var intake sync.WaitGroup
	shards := make([]chan *broker.Change, intakeShards)
	for i := range shards {
		shards[i] = make(chan *broker.Change, 16)
		intake.Add(1)
		go func(in <-chan *broker.Change) {
			defer intake.Done()
			for c := range in {
				d.handle(ctx, c)
			}
		}(shards[i])
	}
	for {
		c, err := changes.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, broker.ErrChangesStopped) {
				break
			}
			d.log.Warn("webhook consumer", "err", err)
			continue
		}
		h := fnv.New32a()
		h.Write([]byte(c.JobID))
		shards[h.Sum32()%intakeShards] <- c
	}
	for _, in := range shards {
		close(in)
	}
	intake.Wait()

	stopRedeliver()
	d.stop()
	d.release(changes)
	return nil
}

// releaseTimeout bounds the hand-over of the change consumer at a stop.
const releaseTimeout = 5 * time.Second

// release hands the change consumer over at a stop (ADR-0052, amended): the events this
// dispatcher took and did not store (handed back by handle, or left in the client's
// buffer) are offered again, ahead of their jobs' later events, and then the pin is
// given up, so that another foreman's dispatcher (or this one's next start) takes the
// events at once, not after the pin's 2-minute TTL. All of it reaches the server before
// the connection is drained. Call it once the intake is done.
func (d *Dispatcher) release(changes *broker.ChangeConsumer) {
	ctx, cancel := context.WithTimeout(context.Background(), releaseTimeout)
	defer cancel()
	if err := changes.Release(ctx); err != nil {
		d.log.Warn("webhook consumer release; its events wait for AckWait, its pin for its TTL", "err", err)
	}
}

// start creates (or updates) the consumer of state events and reads the stored pending
// deliveries, each step tried again while JetStream cannot answer (ADR-0030): both are
// safe to repeat.
func (d *Dispatcher) start(ctx context.Context) (*broker.ChangeConsumer, []broker.PendingDelivery, []broker.PendingRef, error) {
	var changes *broker.ChangeConsumer
	err := broker.UntilReady(ctx, d.log, "webhook consumer", func(ctx context.Context) (err error) {
		changes, err = d.store.ConsumeChanges(ctx, broker.ChangeConsumerConfig{
			Durable:       d.cfg.Consumer,
			Description:   "foreman webhook deliveries",
			AckWait:       d.cfg.AckWait,
			MaxAckPending: d.cfg.MaxPending,
		})
		return err
	})
	if err != nil {
		return nil, nil, nil, err
	}
	var (
		pending []broker.PendingDelivery
		failed  []broker.PendingRef
	)
	err = broker.UntilReady(ctx, d.log, "pending webhook deliveries", func(ctx context.Context) (err error) {
		pending, failed, err = d.store.ClaimPendingDeliveries(ctx, nil)
		return err
	})
	if err != nil {
		d.release(changes)
		return nil, nil, nil, err
	}
	return changes, pending, failed, nil
}

// resume queues stored pending deliveries this dispatcher claimed (ordered by job and
// revision), each a lane's as far as its receiver has room (laneCap); the others stay
// in the store (spilled). Once an event of a job is left there, so are the job's later
// ones; so are those after an entry of the job the claim failed to read or adopt
// (failed), read by the claim or not: such a job counts as having events spilled up to
// its latest revision failed, so that an event of it handle stores meanwhile spills too
// rather than go out first and get the failed one superseded at its load (ADR-0055).
// It returns the jobs of failed, by their earliest revision failed.
func (d *Dispatcher) resume(ctx context.Context, pending []broker.PendingDelivery, failed []broker.PendingRef) map[string]uint64 {
	kept := make(map[string]uint64, len(failed))
	d.mu.Lock()
	for _, f := range failed {
		if rev, ok := kept[f.JobID]; !ok || f.Rev < rev {
			kept[f.JobID] = f.Rev
		}
		d.holdFailedLocked(f.JobID, f.Rev)
	}
	d.mu.Unlock()
	spilledJob := ""
	for _, p := range pending {
		e := &event{jobID: p.JobID, rev: p.Rev, srev: p.Revision, attempts: p.Attempts, nextAt: d.storedNextAt(p.NextAt), waitRead: true}
		if job, err := broker.DecodeJob(p.Body); err == nil && job.Webhook != nil {
			e.receiver = receiverOf(job.Webhook.URL) // one that is not is dropped at its load (having taken a slot of receiver "")
		}
		if p.JobID == spilledJob {
			d.spill(e, true)
			continue
		}
		if rev, ok := kept[p.JobID]; ok && p.Rev > rev {
			d.spill(e, false)
			continue
		}
		if errors.Is(d.enqueueClaimed(ctx, e, true), errSpilled) {
			spilledJob = p.JobID
		}
	}
	return kept
}

// claimLoop adopts, every ClaimEvery until ctx ends, the pending deliveries whose
// foreman is gone (ADR-0052): stored by a foreman that died for good, they would wait
// for some dispatcher's start. It takes up this foreman's own held by no lane (left in
// the store beyond a receiver's laneCap) then too, and as soon as such a receiver's
// lanes free (nudge).
func (d *Dispatcher) claimLoop(ctx context.Context) {
	t := time.NewTicker(d.cfg.ClaimEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.nudge:
		}
		d.claim(ctx)
	}
}

// holds reports whether a lane holds the stored event of job id at revision rev, handle
// is storing and queuing it, or finish is removing it.
func (d *Dispatcher) holds(jobID string, rev uint64) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := (&event{jobID: jobID, rev: rev}).webhookID()
	return d.known[id] || d.intake[id] || d.finishing[id]
}

// stop ends the lanes: waiting ones at once, running ones when their attempt returns.
func (d *Dispatcher) stop() {
	d.mu.Lock()
	d.closed = true
	for _, l := range d.lanes {
		if l.timer != nil {
			l.timer.Stop()
		}
	}
	d.mu.Unlock()
	d.slotsMu.Lock()
	d.slotsClosed = true
	for _, rs := range d.slots {
		d.stopBackstop(rs)
	}
	d.slotsMu.Unlock()
	d.wg.Wait() // the lanes, and the backstops' callbacks running
}

// handle acks events that need no delivery and stores the rest as pending deliveries
// before acking them, then queues them on their job's lane.
func (d *Dispatcher) handle(ctx context.Context, msg *broker.Change) {
	// A refresh (broker.Store.Refresh) writes the same record again, and a write that
	// keeps the state (a cancel requested, an artifact added) changes no state: no news
	// to report. A job's first event is a create, never marked.
	if msg.Deleted || msg.Refresh || msg.SameState {
		_ = msg.Ack()
		return
	}
	jobID := msg.JobID
	if err := broker.ValidateID(jobID); err != nil {
		d.log.Warn("webhook event of a key that names no job", "key", jobID, "err", err)
		_ = msg.Ack()
		return
	}
	if msg.MetaErr != nil {
		d.log.Warn("webhook event without metadata", "job_id", jobID, "err", msg.MetaErr)
		_ = msg.Ack()
		return
	}
	job, err := broker.DecodeJob(msg.Data)
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
	d.log.Debug("webhook event", "job_id", jobID, "state", job.State, "num_delivered", msg.NumDelivered)
	now := time.Now().UTC()
	p := broker.PendingDelivery{JobID: jobID, Rev: msg.Rev, NextAt: now, Body: msg.Data}
	e := &event{jobID: jobID, rev: p.Rev, nextAt: now, receiver: receiverOf(job.Webhook.URL)}
	// From its store until it is queued (or spilled), claims leave the event to this
	// intake: one reading it meanwhile would queue it too, and the event be sent twice.
	d.mu.Lock()
	d.intake[e.webhookID()] = true
	d.mu.Unlock()
	// Not stored, the event is tried again here, holding its shard: handed back to
	// JetStream, it would come again after the job's later events, which its shard
	// would meanwhile store and send.
	srev, created, err := d.store.AddPendingDelivery(ctx, p)
	// The pause stays under AckWait, so the message kept in progress is not offered again.
	for pause := d.cfg.BaseDelay; err != nil; pause = min(2*pause, 30*time.Second, d.cfg.AckWait/2) {
		if ctx.Err() == nil {
			d.log.Warn("store pending webhook delivery; trying again", "job_id", jobID, "err", err, "retry_in", pause)
		}
		_ = msg.InProgress() // the message stays this dispatcher's meanwhile
		select {
		case <-ctx.Done():
			d.mu.Lock()
			delete(d.intake, e.webhookID())
			d.mu.Unlock()
			// Release offers it again, ahead of the job's later events, before the
			// consumer is given up.
			msg.GiveBack()
			return
		case <-time.After(pause):
		}
		srev, created, err = d.store.AddPendingDelivery(ctx, p)
	}
	// A pending delivery that existed already (the ack of an earlier try was lost) keeps
	// its progress; a lane has it, or its owner's next claim (or an adopter's) finds it.
	if err := msg.Ack(); err != nil && !errors.Is(err, broker.ErrConnClosed) {
		d.log.Warn("webhook ack", "job_id", jobID, "err", err)
	}
	if created { // the first attempt needs no read of what was just stored
		e.body, e.job, e.srev = p.Body, job, srev
	}
	_ = d.enqueue(ctx, e) // errStopping or errSpilled: the pending delivery waits for a claim
}

// errStopping is enqueue after the dispatcher stopped.
var errStopping = errors.New("webhook dispatcher is stopping")

// redeliveryPendingError is enqueue refusing a manual redelivery: the job has one
// pending already.
type redeliveryPendingError struct{ jobID, webhookID string }

func (e *redeliveryPendingError) Error() string {
	return fmt.Sprintf("a redelivery of job %s is already pending (webhook-id %s); its attempts show in the delivery log", e.jobID, e.webhookID)
}

// enqueue adds e to its job's lane and starts the lane when it was empty. A stored event
// already queued (resumed at start and offered again by JetStream) is not added twice; a
// manual redelivery is refused (*redeliveryPendingError) while the job has one. A job
// with no lane gets one only while its receiver has fewer than laneCap: beyond, a
// stored event stays in the store only (errSpilled) and a manual redelivery is refused
// (*receiverFullError). A stored event of a job with events spilled spills too, lane or
// not (spill.go).
func (d *Dispatcher) enqueue(ctx context.Context, e *event) error {
	return d.enqueueClaimed(ctx, e, false)
}

// enqueueClaimed is enqueue; claimed is a claim's resume queuing e, a job's events in
// order: a job's event spilled earlier does not make e spill, and the job's spill ends
// with its latest event spilled queued.
func (d *Dispatcher) enqueueClaimed(ctx context.Context, e *event, claimed bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !e.manual {
		delete(d.intake, e.webhookID()) // queued or spilled from here on
	}
	if d.closed {
		return errStopping
	}
	if e.manual {
		if id, ok := d.manual[e.jobID]; ok {
			return &redeliveryPendingError{jobID: e.jobID, webhookID: id}
		}
	} else if d.known[e.webhookID()] {
		return nil
	} else if _, ok := d.spilled[e.jobID]; ok && !claimed {
		d.spillLocked(e, true, true)
		return errSpilled
	}
	l, ok := d.lanes[e.jobID]
	if !ok && d.held[e.receiver] >= d.laneCap() {
		if e.manual {
			return &receiverFullError{jobID: e.jobID, receiver: e.receiver, lanes: d.held[e.receiver]}
		}
		d.spillLocked(e, !claimed, true) // a claim's resume wakes no claim (spill)
		return errSpilled
	}
	if e.manual {
		d.manual[e.jobID] = e.webhookID()
	} else {
		d.known[e.webhookID()] = true
	}
	if !ok {
		l = &lane{receiver: e.receiver}
		d.lanes[e.jobID] = l
		d.held[e.receiver]++
	}
	if !e.manual && len(l.queue) > 0 {
		// Not tried next: its body is read from the store at its turn, so that lanes
		// waiting on a receiver hold none.
		e.body, e.job = nil, nil
	}
	l.queue = append(l.queue, e)
	if j, ok := d.spilled[e.jobID]; ok && claimed && e.rev >= j.rev {
		d.takenUpLocked(e.jobID)
	}
	if len(l.queue) == 1 && !l.running {
		d.startLane(ctx, e.jobID, l)
	}
	return nil
}

// startLane runs l; d.mu is held.
func (d *Dispatcher) startLane(ctx context.Context, jobID string, l *lane) {
	l.running, l.timer = true, nil
	d.wg.Add(1)
	go d.runLane(ctx, jobID, l)
}

// wake restarts a lane whose first event's retry is due.
func (d *Dispatcher) wake(ctx context.Context, jobID string, l *lane) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.lanes[jobID] != l || l.running || len(l.queue) == 0 {
		return
	}
	d.startLane(ctx, jobID, l)
}

// runLane delivers one job's events in order. It returns when the lane is empty, when
// its first event must wait for a retry (a timer then wakes the lane), or when ctx ends.
func (d *Dispatcher) runLane(ctx context.Context, jobID string, l *lane) {
	defer d.wg.Done()
	for {
		d.mu.Lock()
		if len(l.queue) == 0 {
			delete(d.lanes, jobID)
			d.laneGoneLocked(l.receiver)
			l.running = false
			d.mu.Unlock()
			return
		}
		e := l.queue[0]
		if l.unparked {
			l.unparked = false
			if e.parked {
				e.parked, e.nextAt = false, time.Now()
			}
		}
		if wait := time.Until(e.nextAt); e.parked || wait > 0 || d.closed || ctx.Err() != nil {
			l.running = false
			if !e.parked && !d.closed && ctx.Err() == nil { // a parked one: its receiver's backstop
				l.timer = time.AfterFunc(wait, func() { d.wake(ctx, jobID, l) })
			}
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()

		if !d.attempt(ctx, e) {
			continue // e.nextAt moved on, or ctx ended
		}
		d.mu.Lock()
		l.queue = l.queue[1:]
		if e.manual {
			delete(d.manual, jobID)
		} else {
			delete(d.known, e.webhookID())
		}
		d.mu.Unlock()
	}
}

// onRedeliver answers a redelivery request (broker.Store.Redeliver): the job's latest
// state event its webhook_events want is queued again, with its original webhook-id (so
// receivers can dedupe) and fresh attempts, unless the job has a manual redelivery
// pending already (an error naming it) or no such event (an error saying so). The event
// carries its record in memory until its last attempt.
func (d *Dispatcher) onRedeliver(ctx context.Context, id string) broker.RedeliverReply {
	if err := broker.ValidateID(id); err != nil {
		return broker.RedeliverReply{Error: err.Error()}
	}
	d.mu.Lock()
	pending, ok := d.manual[id]
	d.mu.Unlock()
	if ok { // refused before the record is read; enqueue checks again
		return broker.RedeliverReply{Error: (&redeliveryPendingError{jobID: id, webhookID: pending}).Error()}
	}
	data, _, err := d.store.GetRaw(ctx, id)
	if err != nil {
		return broker.RedeliverReply{Error: fmt.Sprintf("job %s not found", id)}
	}
	job, err := broker.DecodeJob(data)
	if err != nil {
		return broker.RedeliverReply{Error: err.Error()}
	}
	if job.Sync || job.Webhook == nil || job.Webhook.URL == "" {
		return broker.RedeliverReply{Error: "job has no webhook"}
	}
	// The record as it is now may be a write no webhook reported (a refresh, an artifact
	// added) or a state the job's webhook_events leave out.
	data, rev, err := d.store.LatestStateEvent(ctx, id, job.Webhook.Wants)
	if errors.Is(err, broker.ErrNoStateEvent) {
		return broker.RedeliverReply{Error: fmt.Sprintf("job %s has no state event its webhook_events want (%s) to send again; it is %s", id, wantedStates(job.Webhook), job.State)}
	}
	if err != nil {
		return broker.RedeliverReply{Error: err.Error()}
	}
	if job, err = broker.DecodeJob(data); err != nil {
		return broker.RedeliverReply{Error: err.Error()}
	}
	e := &event{jobID: id, rev: rev, body: data, job: job, manual: true, receiver: receiverOf(job.Webhook.URL)}
	if err := d.enqueue(ctx, e); err != nil {
		return broker.RedeliverReply{Error: err.Error()}
	}
	return broker.RedeliverReply{WebhookID: e.webhookID(), State: string(job.State)}
}

// wantedStates names the states a webhook reports, for an error.
func wantedStates(w *broker.Webhook) string {
	if len(w.Events) == 0 {
		return "every state"
	}
	names := make([]string, len(w.Events))
	for i, s := range w.Events {
		names[i] = string(s)
	}
	return strings.Join(names, ", ")
}

// errReceiverBusy is acquire finding every slot of a receiver taken and PerReceiver
// lanes waiting for one already.
var errReceiverBusy = errors.New("webhook receiver busy")

// acquire takes one of the receiver's PerReceiver slots for job jobID's lane; release
// gives it back. With none free it waits, unless PerReceiver lanes wait for the receiver
// already: then it returns errReceiverBusy at once, and the event waits in its lane with
// neither a goroutine nor its body, parked until a release wakes it (unpark). It fails
// otherwise only when ctx ends.
func (d *Dispatcher) acquire(ctx context.Context, receiver, jobID string) (release func(), err error) {
	d.slotsMu.Lock()
	rs := d.slots[receiver]
	if rs == nil {
		rs = &receiverSlots{ch: make(chan struct{}, d.cfg.PerReceiver), parkedSet: map[string]bool{}}
		d.slots[receiver] = rs
	}
	release = func() {
		<-rs.ch
		d.leave(ctx, receiver, rs)
	}
	select {
	case rs.ch <- struct{}{}:
		rs.users++
		rs.unpark(jobID) // woken by its backstop instead
		d.slotsMu.Unlock()
		return release, nil
	default:
	}
	if rs.waiting >= d.cfg.PerReceiver {
		if !rs.parkedSet[jobID] {
			rs.parkedSet[jobID] = true
			rs.parked = append(rs.parked, jobID)
		}
		d.armBackstop(ctx, rs)
		d.slotsMu.Unlock()
		return nil, errReceiverBusy
	}
	rs.waiting++
	rs.users++
	rs.unpark(jobID)
	d.slotsMu.Unlock()
	select {
	case rs.ch <- struct{}{}:
		d.slotsMu.Lock()
		rs.waiting--
		d.slotsMu.Unlock()
		d.wakeParked(ctx, rs, false) // for the place among the waiters this lane left
		return release, nil
	case <-ctx.Done():
		d.slotsMu.Lock()
		rs.waiting--
		d.slotsMu.Unlock()
		d.leave(ctx, receiver, rs)
		return nil, ctx.Err()
	}
}

// takePlace takes one of the MaxInFlight places for an attempt holding its receiver's
// slot (ADR-0122), waiting for one when all are taken (a blocked send on a channel is
// served first in, first out, so the waiters go in turn); release gives it back. It
// fails only when ctx ends.
func (d *Dispatcher) takePlace(ctx context.Context) (release func(), err error) {
	release = func() { <-d.places }
	select {
	case d.places <- struct{}{}:
		return release, nil
	default:
	}
	d.slotsMu.Lock()
	d.globalWaiting++
	d.slotsMu.Unlock()
	defer func() {
		d.slotsMu.Lock()
		d.globalWaiting--
		d.slotsMu.Unlock()
	}()
	select {
	case d.places <- struct{}{}:
		return release, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// leave counts a lane out of a receiver's users. The token it gave back goes to a lane
// waiting for one, which then wakes the lane parked longest for its place among the
// waiters (acquire); with none waiting, leave wakes that lane for the token itself. The
// last user wakes every parked lane and removes the receiver's entry, so that none is
// left parked on an entry no release will come to.
func (d *Dispatcher) leave(ctx context.Context, receiver string, rs *receiverSlots) {
	d.slotsMu.Lock()
	last := false
	if rs.users--; rs.users == 0 {
		delete(d.slots, receiver)
		last = true
		d.stopBackstop(rs)
	}
	wake := last || rs.waiting == 0
	d.slotsMu.Unlock()
	if wake {
		d.wakeParked(ctx, rs, last)
	}
}

// wakeParked wakes the lane parked longest on rs (all: every one).
func (d *Dispatcher) wakeParked(ctx context.Context, rs *receiverSlots, all bool) {
	for {
		d.slotsMu.Lock()
		if len(rs.parked) == 0 {
			d.slotsMu.Unlock()
			return
		}
		id := rs.parked[0]
		rs.unpark(id)
		d.slotsMu.Unlock()
		if d.unpark(ctx, id) && !all {
			return
		}
	}
}

// unpark drops jobID from the parked lanes.
func (rs *receiverSlots) unpark(jobID string) {
	if rs.parkedSet[jobID] {
		delete(rs.parkedSet, jobID)
		rs.parked = slices.DeleteFunc(rs.parked, func(id string) bool { return id == jobID })
	}
}

// unpark starts job jobID's lane at once if its first event is parked on its receiver:
// it need not wait out its busyPause (a lane still running on its way to stopping is told
// to try again instead). It reports whether the lane was woken.
func (d *Dispatcher) unpark(ctx context.Context, jobID string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.lanes[jobID]
	if d.closed || ctx.Err() != nil || l == nil || len(l.queue) == 0 {
		return false
	}
	if l.running {
		// Between its acquire, which parked it, and its stop: it tries again instead.
		l.unparked = true
		return true
	}
	if !l.queue[0].parked {
		return false
	}
	if l.timer != nil {
		l.timer.Stop()
	}
	l.queue[0].parked, l.queue[0].nextAt = false, time.Now()
	d.startLane(ctx, jobID, l)
	return true
}

// busyPause is how long the events parked on a busy receiver (every slot taken and
// PerReceiver lanes waiting) wait at most, ±20%, before the one parked longest asks
// again (armBackstop): a release of the receiver's slot wakes them sooner (leave), this
// only backs that up.
const busyPause = 5 * time.Second

// receiverOf names the receiver whose slots a webhook URL's attempts take: its host's
// registrable domain (example.com for hooks.eu.example.com; a name right under a public
// suffix, such as x.github.io, is its own) or its address (an IPv6 one by its /64), with
// the port. Subdomains, letter case, a trailing dot and the spellings of an address are
// left out: each is free to multiply (a wildcard DNS name per job), and each spelling had
// PerReceiver connections of its own to one server. The port stays: services on one
// machine at different ports are different receivers.
func receiverOf(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return rawURL
	}
	return net.JoinHostPort(receiverHost(u.Hostname()), strconv.Itoa(int(portOf(u))))
}

// receiverHost is receiverOf's host part.
func receiverHost(host string) string {
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	ip, err := netip.ParseAddr(host)
	if err != nil {
		var ok bool
		if ip, ok = inetAton(host); !ok { // 16843009 and 1.1.1.1 are one address
			if domain, err := publicsuffix.EffectiveTLDPlusOne(host); err == nil {
				return domain
			}
			return host // a public suffix itself, or a single label
		}
	}
	ip = ip.Unmap().WithZone("")
	if ip.Is6() {
		return netip.PrefixFrom(ip, 64).Masked().String()
	}
	return ip.String()
}
