package broker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Lease is one queue message the worker took: its job is the worker's until the message
// is acked (Finish, Discard, DropSpare), handed back (a NAK, Requeue) or its AckWait
// passes without InProgress.
type Lease struct {
	Msg   jetstream.Msg
	JobID string
	Model string
	// Token is the queue key the message came on (QueueKey.String).
	Token string
	Kind  Kind
	// Body is the request body, fetched from the object store when it was too large for the
	// queue message.
	Body         []byte
	Seq          uint64
	NumDelivered uint64
	Enqueued     time.Time
	// Requeued is set on a message Requeue published (HeaderRequeued).
	Requeued bool
	// Gateway is the boot id of the process whose caller waits for this sync job
	// (HeaderGateway); "" for an async job.
	Gateway string
}

// consumerIdle is how long a queue consumer lives without a fetch.
const consumerIdle = time.Hour

// consumer returns the durable pull consumer of one queue subject (a queue key), creating
// it on first use. Each key has its own so the worker can choose what to run next; one
// consumer with a changing filter would skip older jobs.
func (s *Store) consumer(ctx context.Context, token string) (jetstream.Consumer, error) {
	now := s.cfg.Now()
	s.mu.Lock()
	cc, ok := s.consumers[token]
	if ok {
		cc.used = now
		s.consumers[token] = cc
	}
	s.mu.Unlock()
	if ok {
		return cc.Consumer, nil
	}
	key, err := ParseQueueKey(token)
	if err != nil {
		return nil, err
	}
	model, _ := ModelFromToken(key.Model)
	ccfg := jetstream.ConsumerConfig{
		Durable:       ConsumerName(token),
		Description:   "foreman queue of " + model + " (" + string(key.Class) + ")",
		FilterSubject: QueueSubject(token),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       s.cfg.AckWait,
		// A safety net above the worker's own attempt count; the worker terminates a job
		// before JetStream would give up on it.
		MaxDeliver:    s.cfg.MaxDeliver(),
		MaxAckPending: 10_000, // NAK-delayed jobs count here; they must not block the model
		// Consumers of queues nobody asks for any more go away; a new one starts from the
		// remaining (pending) messages, which in a work queue is exactly right. An hour
		// outlasts any retry back-off, and keeps the consumers of short-lived programs few.
		InactiveThreshold: min(s.cfg.JobTTL, consumerIdle),
		Metadata:          map[string]string{"model": model, "class": string(key.Class), "program": key.ProgramName(), "load_opts": key.Opts},
		Replicas:          s.cfg.Replicas,
	}
	if err := s.raisedConsumer(ctx, &ccfg); err != nil {
		return nil, fmt.Errorf("broker: consumer for %s: %w", model, err)
	}
	c, err := s.createConsumer(ctx, ccfg)
	if errors.Is(err, jetstream.ErrMaximumConsumersLimit) && s.reapConsumers(ctx) > 0 {
		c, err = s.createConsumer(ctx, ccfg)
	}
	if err != nil {
		return nil, fmt.Errorf("broker: consumer for %s: %w", model, err)
	}
	if s.isUnlisted(token) && tookUpState(c.CachedInfo()) {
		// A consumer the server skipped at the start, created over its directory: it
		// took up the state of the previous process, its taken jobs waiting out AckWait.
		// Made afresh, it delivers the key's jobs from the first at once (ADR-0024). The
		// key stays noted until that is done: a delete or create that fails leaves it to
		// the next create, which finds the state again (or, once deleted, none).
		held := c.CachedInfo().NumAckPending
		if s.renewing != nil {
			s.renewing()
		}
		if err := s.queue.DeleteConsumer(ctx, ccfg.Durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, fmt.Errorf("broker: delete consumer %s: %w", ccfg.Durable, err)
		}
		if c, err = s.createConsumer(ctx, ccfg); err != nil {
			return nil, fmt.Errorf("broker: consumer for %s: %w", model, err)
		}
		s.log.Info("a queue consumer the server did not recover was made afresh", "consumer", ccfg.Durable, "jobs_taken", held)
	}
	s.dropUnlisted(token)
	s.mu.Lock()
	if len(s.consumers) >= maxCachedConsumers {
		// Queue keys come from callers (a program name, load options): a new one per job
		// would grow the cache for the process's life. One not fetched from for a while is
		// looked up again when it is (the server keeps it for consumerIdle).
		for t, cc := range s.consumers {
			if now.Sub(cc.used) > cachedConsumerIdle {
				delete(s.consumers, t)
			}
		}
	}
	s.consumers[token] = cachedConsumer{Consumer: c, used: now}
	s.mu.Unlock()
	return c, nil
}

// createConsumer creates or updates a queue consumer, twice when the server fails the
// create on its own files (err_code 10012, its general failure). A consumer of the same
// name deleted a moment before (idle past its InactiveThreshold, or by renew) may still
// be flushing its state file into the directory the new one is made in, and the new
// one's write of it finds its temporary file renamed away by the old one's ("rename
// …/o.dat.tmp …/o.dat: no such file or directory"). The server removes the failed
// consumer's directory and the old one writes no more, so the create made again succeeds,
// where the error would fail a pick (or a start's renew, and the start with it).
func (s *Store) createConsumer(ctx context.Context, ccfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	s.queueCfg.RLock()
	defer s.queueCfg.RUnlock()
	c, err := s.queue.CreateOrUpdateConsumer(ctx, ccfg)
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeConsumerCreate {
		s.log.Info("the server failed a queue consumer's create; made again", "consumer", ccfg.Durable, "err", err)
		c, err = s.queue.CreateOrUpdateConsumer(ctx, ccfg)
	}
	return c, err
}

// reapBatch is how many idle queue consumers reapConsumers deletes at most: room for as
// many new queues before the next look, without holding up the fetch that found the limit
// for long (a delete is one request to the server, and the look lists every consumer).
const reapBatch = 64

// reapConsumers deletes up to reapBatch queue consumers that hold nothing for a worker,
// those with queued jobs last, the longest idle first, and reports how many it deleted.
//
// nats-server caps the consumers of a stream (1,000 by default since 2.15, or the limit
// an operator set), and each queue key that ran a job keeps its consumer for
// consumerIdle: a thousand programs in an hour, or a caller naming a new program or new
// load options for each request, would leave every new queue without one. A consumer
// with a delivery awaiting its ack (a running job, one in its retry back-off) or a fetch
// waiting is kept: deleting it would hand its job out again. Any other holds only what
// the stream holds: its jobs stay queued, and the key's next fetch makes it again (on a
// shared NATS, another foreman's fetch from one deleted under it does the same).
func (s *Store) reapConsumers(ctx context.Context) int {
	var idle []*jetstream.ConsumerInfo
	list := s.queue.ListConsumers(ctx)
	for info := range list.Info() {
		if isQueueConsumer(info.Name) && info.NumAckPending == 0 && info.NumWaiting == 0 {
			idle = append(idle, info)
		}
	}
	if err := list.Err(); err != nil && len(idle) == 0 {
		s.log.Warn("queue consumers at the server's limit; list them to delete idle ones", "err", err)
		return 0
	}
	slices.SortFunc(idle, func(a, b *jetstream.ConsumerInfo) int {
		if c := cmp.Compare(min(a.NumPending, 1), min(b.NumPending, 1)); c != 0 {
			return c
		}
		return lastActive(a).Compare(lastActive(b))
	})
	deleted := make(map[string]bool)
	for _, info := range idle[:min(len(idle), reapBatch)] {
		err := s.queue.DeleteConsumer(ctx, info.Name)
		if err == nil || errors.Is(err, jetstream.ErrConsumerNotFound) {
			deleted[info.Name] = true
		}
	}
	s.mu.Lock()
	for token := range s.consumers {
		if deleted[ConsumerName(token)] {
			delete(s.consumers, token)
		}
	}
	s.mu.Unlock()
	s.log.Warn("queue consumers at the server's limit: deleted idle ones (many programs or load options in the last hour; see README, Priorities and programs)",
		"stream", QueueStream, "deleted", len(deleted), "idle", len(idle))
	return len(deleted)
}

// isQueueConsumer reports whether name is one of ConsumerName's.
func isQueueConsumer(name string) bool {
	return strings.HasPrefix(name, "m-") || strings.HasPrefix(name, "q-")
}

// lastActive is when consumer info was last seen to work: made, or a delivery or ack.
func lastActive(info *jetstream.ConsumerInfo) time.Time {
	t := info.Created
	for _, at := range []*time.Time{info.Delivered.Last, info.AckFloor.Last} {
		if at != nil && at.After(t) {
			t = *at
		}
	}
	return t
}

// cachedConsumer is a queue's consumer and when it was last fetched from.
type cachedConsumer struct {
	jetstream.Consumer
	used time.Time
}

// maxCachedConsumers is how many queue consumers the Store keeps before it forgets those
// not used for cachedConsumerIdle.
const (
	maxCachedConsumers = 256
	cachedConsumerIdle = time.Minute
)

// Next fetches the next available job of one model without waiting. It returns
// (nil, nil) when that model has nothing ready (empty, or only jobs in retry back-off).
// It is for a queue the caller has seen hold messages (the worker's index of the heads).
//
// A no_wait pull is answered from the count of pending messages the server keeps for the
// consumer, which lags a publish and was seen one short after a deletion (a canceled
// job's message), every pick then missing a job that sat in the stream (ADR-0087). So an
// empty answer is looked at again: when the queue holds more messages than await an ack
// on its consumer (a job in retry back-off does, and so does one running), one is ready,
// and a pull that waits (up to recountWait) is served from the stream itself. Not every
// pull waits: its expiry, short enough not to hold a pick up, can run out before a
// loaded server delivers a message that is there.
func (s *Store) Next(ctx context.Context, token string) (*Lease, error) {
	d, err := s.fetchNoWait(ctx, token)
	if d != nil || err != nil {
		return d, err
	}
	return s.nextAgain(ctx, token)
}

// NextPast is Next for a queue whose head, message seq, is a job the caller is still
// finishing (its message stays until the ack the caller is about to send): an empty
// answer is looked at again only when the queue holds a message after that one.
// drained reports that it holds none: nothing of the queue waits but the job being
// finished, and no recheck can deliver anything. The pick right after nearly every job
// meets this queue, and for an idle queue it costs one read instead of the second
// look's three requests and the rechecks that followed it.
func (s *Store) NextPast(ctx context.Context, token string, seq uint64) (_ *Lease, drained bool, _ error) {
	d, err := s.fetchNoWait(ctx, token)
	if d != nil || err != nil {
		return d, false, err
	}
	if _, ok, err := s.OldestOfFrom(ctx, token, seq+1); err == nil && !ok {
		return nil, true, nil
	}
	d, err = s.nextAgain(ctx, token)
	return d, false, err
}

func (s *Store) fetchNoWait(ctx context.Context, token string) (*Lease, error) {
	return s.fetch(ctx, token, func(c jetstream.Consumer) (jetstream.MessageBatch, error) { return c.FetchNoWait(1) })
}

// nextAgain is Next's second look, after a no_wait fetch of token came up empty.
func (s *Store) nextAgain(ctx context.Context, token string) (*Lease, error) {
	c, err := s.consumer(ctx, token)
	if err != nil {
		return nil, nil // the no_wait fetch's answer stands
	}
	info, err := c.Info(ctx)
	if err != nil {
		return nil, nil
	}
	if info.NumAckPending > 0 && s.queuedOn(ctx, token) <= uint64(info.NumAckPending) {
		return nil, nil // every message it holds awaits an ack: in back-off, or running
	}
	return s.NextWait(ctx, token, recountWait)
}

// queuedOn is how many messages the queue stream holds for queue token, 0 when that
// cannot be read.
func (s *Store) queuedOn(ctx context.Context, token string) uint64 {
	subject := QueueSubject(token)
	info, err := s.queue.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		return 0
	}
	return info.State.Subjects[subject]
}

// recountWait bounds Next's second look, at a queue whose consumer's count of pending
// messages may be short.
const recountWait = 25 * time.Millisecond

// NextWait is Next that waits up to wait for a job of the model to become available: the
// server answers as soon as its consumer has one, with no polling.
func (s *Store) NextWait(ctx context.Context, token string, wait time.Duration) (*Lease, error) {
	return s.fetch(ctx, token, func(c jetstream.Consumer) (jetstream.MessageBatch, error) {
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl))
		}
		return c.Fetch(1, jetstream.FetchMaxWait(max(wait, time.Millisecond)))
	})
}

func (s *Store) fetch(ctx context.Context, token string, fetch func(jetstream.Consumer) (jetstream.MessageBatch, error)) (*Lease, error) {
	for attempt := 0; ; attempt++ {
		d, err := s.fetchOnce(ctx, token, fetch)
		// A consumer the server deleted (idle past its InactiveThreshold, ADR-0027) is
		// forgotten by fetchOnce; made again at once, it delivers what its queue holds.
		if attempt == 0 && errors.Is(err, errFetchGone) {
			continue
		}
		return d, err
	}
}

// errFetchGone marks a fetch that found its cached consumer gone from the server.
var errFetchGone = errors.New("its consumer is gone")

func (s *Store) fetchOnce(ctx context.Context, token string, fetch func(jetstream.Consumer) (jetstream.MessageBatch, error)) (*Lease, error) {
	c, err := s.consumer(ctx, token)
	if err != nil {
		return nil, err
	}
	batch, err := fetch(c)
	if err == nil {
		for msg := range batch.Messages() {
			return s.lease(ctx, token, msg)
		}
		if err = batch.Error(); errors.Is(err, jetstream.ErrNoMessages) {
			err = nil
		}
	}
	if err == nil {
		return nil, nil
	}
	// A consumer the server deleted answers no fetch: its pull requests find no
	// responder (the server's API does not take them for a gone consumer). On a cluster
	// a consumer may also lose its leader (a node died) or never get one. Either way the
	// next fetch creates or updates it again, which places it anew; an error of the
	// batch (the server's answer) counts as much as one of the request.
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrConsumerNotFound), errors.Is(err, jetstream.ErrConsumerDeleted):
		s.forget(token)
		return nil, fmt.Errorf("broker: fetch %s: %w: %w", token, errFetchGone, unavailable(err))
	case Transient(err):
		s.forget(token)
	}
	return nil, fmt.Errorf("broker: fetch %s: %w", token, unavailable(err))
}

// isUnlisted reports whether token is a queue key whose consumer the server did not
// list at an exclusive start and which was not made since (dropUnlisted).
func (s *Store) isUnlisted(token string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unlisted[token]
}

// dropUnlisted marks token's consumer made: its state is the server's own from now on.
func (s *Store) dropUnlisted(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.unlisted, token)
}

// tookUpState reports whether a consumer just created carries a state of its own: it
// delivered, or holds deliveries, so it was made over the directory of an earlier one. A
// new consumer has delivered nothing (its stream sequence is where it starts).
func tookUpState(ci *jetstream.ConsumerInfo) bool {
	return ci != nil && (ci.Delivered.Consumer > 0 || ci.AckFloor.Consumer > 0 || ci.NumAckPending > 0 || ci.NumRedelivered > 0)
}

func (s *Store) forget(token string) {
	s.mu.Lock()
	delete(s.consumers, token)
	s.mu.Unlock()
}

func (s *Store) lease(ctx context.Context, token string, msg jetstream.Msg) (*Lease, error) {
	md, err := msg.Metadata()
	if err != nil {
		return nil, fmt.Errorf("broker: message metadata: %w", err)
	}
	h := msg.Headers()
	d := &Lease{
		Msg:          msg,
		JobID:        h.Get(HeaderJobID),
		Model:        h.Get(HeaderModel),
		Token:        token,
		Kind:         Kind(h.Get(HeaderKind)),
		Body:         msg.Data(),
		Seq:          md.Sequence.Stream,
		NumDelivered: md.NumDelivered,
		Enqueued:     md.Timestamp,
		Requeued:     h.Get(HeaderRequeued) != "",
		Gateway:      h.Get(HeaderGateway),
	}
	if err := d.check(h.Get(HeaderBodyRef)); err != nil {
		return d, err
	}
	if !s.Knows(d.Kind) {
		// Checked last: a message that is no job's is removed whatever its kind.
		return d, fmt.Errorf("%w: %q", ErrUnknownKind, d.Kind)
	}
	if h.Get(HeaderBodyRef) == "" {
		return d, nil
	}
	// The message is delivered, its ack wait running, from the fetch: a body read slower
	// than it (a loaded machine, an object store in trouble) lost the delivery to another
	// foreman before the worker's keep-alive could begin. So it is kept in progress while
	// the body is read, and its ack wait starts afresh once it is.
	stop := keepInProgress(msg, s.cfg.AckWait)
	defer stop()
	if s.bodyRead != nil {
		s.bodyRead(d.JobID)
	}
	return d, s.ReadBody(ctx, d)
}

// keepInProgress tells JetStream the delivery of msg is alive every ackWait/3 until
// stopped, and once more then. A failed tick is not reported: the next one tries again,
// and the worker's keep-alive, which follows, reports its own.
func keepInProgress(msg jetstream.Msg, ackWait time.Duration) (stop func()) {
	done, exited := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(exited)
		t := time.NewTicker(max(ackWait/3, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-t.C:
				_ = msg.InProgress()
			case <-done:
				return
			}
		}
	}()
	return func() {
		close(done)
		<-exited
		_ = msg.InProgress()
	}
}

// ReadBody reads the request body of lease d stored apart from its queue message (too
// large for one, ADR-0019) into d.Body; a lease without one keeps the message's. A lease
// that Next returned with its body unread (the store did not answer) is read again by it.
func (s *Store) ReadBody(ctx context.Context, d *Lease) error {
	ref := d.Msg.Headers().Get(HeaderBodyRef)
	if ref == "" {
		return nil
	}
	body, err := s.getObject(ctx, ref)
	if err != nil {
		return fmt.Errorf("broker: request body %s: %w", ref, err)
	}
	d.Body = body
	return nil
}

// check tells whether a lease can be a job foreman enqueued (Store.enqueue): a job id,
// a model whose queue subject it came on, and no body but the job's own. Its kind is not
// checked: a foreman newer than this one may have added it (Store.Knows).
func (d *Lease) check(bodyRef string) error {
	if err := ValidateID(d.JobID); err != nil {
		return fmt.Errorf("%w: %w", ErrUnusable, err)
	}
	key, _ := ParseQueueKey(d.Token)
	if !ModelOnToken(d.Model, key.Model) {
		return fmt.Errorf("%w: model %q does not belong on %s", ErrUnusable, d.Model, QueueSubject(d.Token))
	}
	if bodyRef != "" && bodyRef != bodyRefOf(d.JobID) {
		return fmt.Errorf("%w: body %q is not the job's", ErrUnusable, bodyRef)
	}
	return nil
}

// Discard removes a queue message that is no job (ErrUnusable) without touching any job
// record or stored body: whatever it names is not its own.
func (s *Store) Discard(d *Lease, reason string) error {
	if err := d.Msg.TermWithReason(reason); err != nil {
		return fmt.Errorf("broker: discard queue message %d: %w", d.Seq, err)
	}
	return nil
}

// Finish removes a delivered job from the queue for good (after its terminal state is
// stored) and drops its stored request body: at most for bodyDeleteWait, and not at all
// while the store cannot write (deleteBody), so that a store that takes no writes does
// not hold the worker at every job with a stored body.
func (s *Store) Finish(ctx context.Context, d *Lease) error {
	err := s.ack(ctx, d)
	if ref := d.Msg.Headers().Get(HeaderBodyRef); ref != "" {
		s.deleteBody(ctx, d.JobID, ref)
	}
	return err
}

// DropSpare removes a spare queue message of a job that another delivery runs (an
// idempotent retry published the job again after the duplicate window). Unlike Finish it
// leaves the request body: the running delivery may still need it for another attempt.
func (s *Store) DropSpare(ctx context.Context, d *Lease) error {
	return s.ack(ctx, d)
}

// ack acks a delivery and waits for the server to confirm, retrying through a leader
// election: an ack lost there would hand the job out again after AckWait. Should it fail
// anyway, the job's record is terminal already and its next delivery is dropped.
//
// A run longer than the job TTL outlives its message (JetStream drops it at the queue's
// MaxAge, in progress or not), and a consumer left with nothing pending goes away after
// its InactiveThreshold without a fetch: an ack to it then finds no responder, which is
// no leader election. The ack is moot: the message is gone, or, should one be left, the
// key's next consumer delivers it and the worker drops it, its job having ended.
func (s *Store) ack(ctx context.Context, d *Lease) error {
	err := s.retry(ctx, func(ctx context.Context) error {
		err := d.Msg.DoubleAck(ctx)
		if errors.Is(err, nats.ErrNoResponders) && s.consumerGone(ctx, d.Token) {
			return errConsumerGone
		}
		return err
	})
	switch {
	case errors.Is(err, jetstream.ErrMsgAlreadyAckd):
		return nil
	case errors.Is(err, errConsumerGone):
		s.log.Info("queue consumer went idle while its job ran; the job's message is dropped at its next delivery",
			"job_id", d.JobID, "consumer", ConsumerName(d.Token))
		return nil
	}
	return err
}

// errConsumerGone ends the retries of an ack to a consumer that no longer exists.
var errConsumerGone = errors.New("broker: queue consumer gone")

// consumerGone reports whether the consumer of queue key token no longer exists, and
// forgets it then, so that the next fetch makes it anew.
func (s *Store) consumerGone(ctx context.Context, token string) bool {
	_, err := s.queue.Consumer(ctx, ConsumerName(token))
	if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false
	}
	s.mu.Lock()
	delete(s.consumers, token)
	s.mu.Unlock()
	return true
}

// Pending is one queued job, as the selection logic sees it.
type Pending struct {
	Token string // queue key

	Seq      uint64
	Enqueued time.Time
	JobID    string

	bodyRef string // the job's stored request body, when its message names it
}

// Oldest returns the oldest message in the queue at or after sequence from, of any model.
// In a work queue the lowest sequence is the oldest pending job. ok is false when none.
func (s *Store) Oldest(ctx context.Context, from uint64) (Pending, bool, error) {
	return s.oldest(ctx, from, QueueWildcard)
}

// OldestOf returns the oldest queued job of one queue key.
func (s *Store) OldestOf(ctx context.Context, token string) (Pending, bool, error) {
	return s.oldest(ctx, 0, QueueSubject(token))
}

// OldestOfFrom returns the oldest queued job of one queue key at or after sequence from.
func (s *Store) OldestOfFrom(ctx context.Context, token string, from uint64) (Pending, bool, error) {
	return s.oldest(ctx, from, QueueSubject(token))
}

func (s *Store) oldest(ctx context.Context, from uint64, subject string) (Pending, bool, error) {
	m, err := s.queue.GetMsg(ctx, from, jetstream.WithGetMsgSubject(subject))
	if errors.Is(err, jetstream.ErrMsgNotFound) && s.mayBeReplicated() {
		// A direct get, which a replica behind the leader answers too: "not found" of a
		// job just queued. The worker's index would take its queue for empty against a
		// stream state that counts the job, and look again only at its full refresh
		// (30 s) while the worker idles. Only the leader's word says none.
		m, err = s.leaderOldest(ctx, from, subject)
	}
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Pending{}, false, nil
	}
	if err != nil {
		return Pending{}, false, fmt.Errorf("broker: oldest in %s: %w", subject, err)
	}
	return pendingOf(m), true, nil
}

// leaderOldest is the first message of subject at or after sequence from, as the queue
// stream's leader answers it.
func (s *Store) leaderOldest(ctx context.Context, from uint64, subject string) (*jetstream.RawStreamMsg, error) {
	m, err := s.leaderMsg(ctx, QueueStream, msgGet{Seq: from, NextFor: subject})
	if err != nil {
		return nil, err
	}
	raw := &jetstream.RawStreamMsg{Subject: m.Subject, Sequence: m.Seq, Data: m.Data, Time: m.Time}
	if len(m.Header) > 0 {
		if raw.Header, err = nats.DecodeHeadersMsg(m.Header); err != nil {
			return nil, fmt.Errorf("broker: decode the headers of queue message %d: %w", m.Seq, err)
		}
	}
	return raw, nil
}

func pendingOf(m *jetstream.RawStreamMsg) Pending {
	token, _ := TokenFromSubject(m.Subject)
	p := Pending{Token: token, Seq: m.Sequence, Enqueued: m.Time, JobID: m.Header.Get(HeaderJobID)}
	// Only the job's own body: a message that names another's is no job's (Lease.check).
	if ref := m.Header.Get(HeaderBodyRef); ref != "" && ref == bodyRefOf(p.JobID) {
		p.bodyRef = ref
	}
	return p
}

// Queued returns the queue message at sequence seq (e.g. the one a delivery-limit advisory
// names). ok is false when it is no longer in the queue.
func (s *Store) Queued(ctx context.Context, seq uint64) (Pending, bool, error) {
	m, err := s.queue.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Pending{}, false, nil
	}
	if err != nil {
		return Pending{}, false, fmt.Errorf("broker: queue message %d: %w", seq, err)
	}
	return pendingOf(m), true, nil
}

// Depth returns the number of queued jobs per model token (including running and
// retrying ones, which stay in the queue until they finish).
func (s *Store) Depth(ctx context.Context) (map[string]uint64, error) {
	keys, err := s.DepthByKey(ctx)
	if err != nil {
		return nil, err
	}
	out := make(map[string]uint64, len(keys))
	for key, n := range keys {
		model, _, _ := strings.Cut(key, ".")
		out[model] += n
	}
	return out, nil
}

// DepthByKey returns the number of queued jobs per queue key (TokenFromSubject).
func (s *Store) DepthByKey(ctx context.Context) (map[string]uint64, error) {
	out, _, err := s.DepthState(ctx)
	return out, err
}

// QueueLen is the number of messages in the queue.
func (s *Store) QueueLen(ctx context.Context) (uint64, error) {
	info, err := s.queue.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("broker: queue info: %w", err)
	}
	return info.State.Msgs, nil
}

// PurgeQueued removes every message on token's queue subject (one no model has: see
// TokenValid).
func (s *Store) PurgeQueued(ctx context.Context, token string) error {
	if err := s.queue.Purge(ctx, jetstream.WithPurgeSubject(QueueSubject(token))); err != nil {
		return fmt.Errorf("broker: purge %s: %w", QueueSubject(token), err)
	}
	return nil
}

// deleteQueueMsg deletes queue message seq. One that is gone already (taken and acked,
// deleted by another) is jetstream.ErrMsgNotFound: nats.go reports it as
// ErrMsgDeleteUnsuccessful with the server's answer as text only, which no errors.Is of
// ErrMsgNotFound matched. The server answers it two ways, by where the message was:
// JSStreamMsgDeleteFailedF with its store's "no message found" (10057), and, for a
// sequence its store finds nothing to remove at (one gone from between others),
// JSSequenceNotFoundErrF "sequence N not found" (10043).
func (s *Store) deleteQueueMsg(ctx context.Context, seq uint64) error {
	err := s.queue.DeleteMsg(ctx, seq)
	if err == nil {
		s.removedHooks.announce(seq)
	}
	if errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) && deletedAlready(err.Error()) {
		return fmt.Errorf("%w: %w", jetstream.ErrMsgNotFound, err)
	}
	return err
}

// deletedAlready says whether the text of a failed deletion is one of the server's two
// answers for a message that is not there.
func deletedAlready(text string) bool {
	return strings.Contains(text, "no message found") ||
		(strings.Contains(text, "err_code=10043") && strings.Contains(text, " not found"))
}

// DeleteQueued removes one queue message by sequence, and nothing else.
func (s *Store) DeleteQueued(ctx context.Context, seq uint64) error {
	err := s.deleteQueueMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil
	}
	return err
}

// RemoveEnded removes queue message p of a job that ended without a delivery to finish
// it (it expired, or passed its delivery limit) and then drops its stored request body,
// as Finish does for a delivered one: left, the body would stay in the object store for
// a job TTL. A message that cannot be removed keeps its body; the worker drops both when
// it meets the message of an ended job.
func (s *Store) RemoveEnded(ctx context.Context, p Pending) error {
	if err := s.DeleteQueued(ctx, p.Seq); err != nil {
		return err
	}
	s.dropBody(ctx, &Job{ID: p.JobID, BodyRef: p.bodyRef})
	return nil
}

// RecordGrace is how long after its queue message was stored a job's record may still be
// on its way: Submit writes both at once and retries the record's write through an
// unavailable cluster for up to Config.RetryWindow, so a message younger than this
// without a record may yet get one. One second covers clocks and scheduling.
func (s *Store) RecordGrace() time.Duration { return s.cfg.RetryWindow + time.Second }

// JobOf reads the record of a leased job, with its revision. Submit stores the record and
// the queue message together (ADR-0031), so a message may be delivered a moment before
// its record: for a lease younger than RecordGrace, JobOf waits for the record until the
// message is that old (or ctx ends). ErrNotFound then means an orphan: a record expired
// or deleted, or a submit that died or failed between its two writes.
func (s *Store) JobOf(ctx context.Context, d *Lease) (*Job, uint64, error) {
	j, rev, err := s.Get(ctx, d.JobID)
	if !errors.Is(err, ErrNotFound) {
		return j, rev, err
	}
	wait := s.RecordGrace() - s.ServerNow().Sub(d.Enqueued)
	if wait <= 0 {
		return nil, 0, err
	}
	wait = min(wait, s.RecordGrace())
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	// Watch before reading again: a record stored between the read and the watch would
	// otherwise be missed until the deadline.
	w, werr := s.WatchJob(wctx, d.JobID)
	if werr != nil {
		return nil, 0, fmt.Errorf("broker: watch %s for its record: %w", d.JobID, werr)
	}
	defer w.Stop()
	for {
		j, rev, err = s.Get(ctx, d.JobID)
		if !errors.Is(err, ErrNotFound) {
			return j, rev, err
		}
		if _, werr := w.Next(wctx); werr != nil {
			if ctx.Err() != nil {
				return nil, 0, ctx.Err()
			}
			// The grace has passed. One last read: on a cluster the reads before may
			// have met a replica that had not applied the record yet.
			return s.Get(ctx, d.JobID) // ErrNotFound: an orphan
		}
	}
}
