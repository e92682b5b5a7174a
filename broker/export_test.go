package broker

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ListModes are the ways List reads, for tests that check each one.
var ListModes = map[string]func(*Store){
	"by cost": func(s *Store) { s.listMode = listByCost },
	"by scan": func(s *Store) { s.listMode = listByScan },
	"by keys": func(s *Store) { s.listMode = listByKeys },
}

// ShiftQueueLook moves the start of Resubmit's look in the queue by d, as a skew of the
// queue leader's clock behind the jobs bucket leader's by d would.
func (s *Store) ShiftQueueLook(d time.Duration) { s.lookShift = d }

// SetListFetch sets a hook called with the listing consumer's name before each of its
// pulls.
func (s *Store) SetListFetch(fn func(consumer string)) { s.listFetch = fn }

// SetRecordsRead sets a hook called with the number of job records a listing is about
// to read.
func (s *Store) SetRecordsRead(fn func(n int)) { s.recordsRead = fn }

// SetTargetsRead sets a hook called between a Targets read of the bucket and its caching.
func (s *Store) SetTargetsRead(fn func()) { s.targetsRead = fn }

// SetBodyRead sets a hook called with a fetched lease's job id as its request body,
// stored apart, is read.
func (s *Store) SetBodyRead(fn func(id string)) { s.bodyRead = fn }

// SetRenewing sets a hook called before a consumer the server did not list at the
// start, which took up a previous state, is deleted to be made afresh.
func (s *Store) SetRenewing(fn func()) { s.renewing = fn }

// FramePieces is framePieces, for the fuzz target.
var FramePieces = framePieces

// InboxReply is inboxReply, for its table test.
var InboxReply = inboxReply

// SetPendingLimits sets the limits of the feed's subscription, to make NATS drop.
func (f *JobFeed) SetPendingLimits(msgs, bytes int) error { return f.sub.SetPendingLimits(msgs, bytes) }

// Pending is how many messages wait in the feed's subscription for its callback.
func (f *JobFeed) Pending() int {
	n, _, _ := f.sub.Pending()
	return n
}

// Hold stalls the feed's callback until release, so messages pile up in NATS.
func (f *JobFeed) Hold() (release func()) {
	f.mu.Lock()
	return f.mu.Unlock
}

// JobWildcard is jobWildcard, for its test.
var JobWildcard = jobWildcard

// OnRead calls f after each message the backlog reads.
func (b *Backlog) OnRead(f func(seq uint64)) { b.onRead = f }

// SetMaxDeleted sets the longest list of deleted sequences the backlog asks for (0: it
// never does, and reads the known messages again instead).
func (b *Backlog) SetMaxDeleted(n int) { b.maxDeleted = n }

// BacklogReadsPerRefresh is readsPerRefresh, for the test that counts them.
const BacklogReadsPerRefresh = readsPerRefresh

// LoseUpdateAnswer makes the store's next record update be stored but answered with a
// timeout, as a write whose answer was lost during a leader election.
func (s *Store) LoseUpdateAnswer() { s.kv = &lostAnswerKV{KeyValue: s.kv} }

type lostAnswerKV struct {
	jetstream.KeyValue
	lost bool
}

func (kv *lostAnswerKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	n, err := kv.KeyValue.Update(ctx, key, value, rev)
	if err == nil && !kv.lost {
		kv.lost = true
		return 0, context.DeadlineExceeded
	}
	return n, err
}

// LoseCreateAnswer makes the store's next record create be stored, then runs after (when
// not nil), then answers err instead, as a create whose answer was lost.
func (s *Store) LoseCreateAnswer(err error, after func(id string)) {
	lost := false
	s.createdRecord = func(id string) error {
		if lost {
			return nil
		}
		lost = true
		if after != nil {
			after(id)
		}
		return err
	}
}

// RemoteStreamWriter is the writer of job id's answer as a worker of another process has
// it: its messages reach this Store's feeds through NATS only. It waits for a reader
// (AwaitReader) as long as this Store's Config.ReaderWait.
func (s *Store) RemoteStreamWriter(id string) *StreamWriter {
	w := newStreamWriter(s.nc, id)
	w.readerWait = s.cfg.ReaderWait
	return w
}

// KeepResendsFor makes w keep its messages for resends d after Close, not resendKeep.
func (w *StreamWriter) KeepResendsFor(d time.Duration) { w.resendKeep = d }

// AfterPublish makes w run f once each message is published, before it goes on.
func (w *StreamWriter) AfterPublish(f func(*nats.Msg)) { w.afterPublish = f }

// HoldNATS makes the feed's NATS callback run hold before it takes its first message;
// undo stops it for later messages.
func (f *JobFeed) HoldNATS(hold func()) (undo func()) {
	var once sync.Once
	h := func(*nats.Msg) bool { once.Do(hold); return false }
	f.beforeReceive.Store(&h)
	return func() { f.beforeReceive.Store(nil) }
}

// LoseOnNATS makes the feed lose, as NATS can on the way, the messages from NATS lose
// picks.
func (f *JobFeed) LoseOnNATS(lose func(*nats.Msg) bool) {
	f.beforeReceive.Store(&lose)
}

// StreamWriterOn is the writer of job id's answer of this Store (its feeds get the
// messages directly) that publishes on nc instead of the Store's connection.
func (s *Store) StreamWriterOn(nc *nats.Conn, id string) *StreamWriter {
	w := s.StreamWriter(id)
	w.nc = nc
	return w
}

// Echoes is how many messages handed over directly still wait for their copy from NATS.
func (f *JobFeed) Echoes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.echoes)
}

// StorageErr is storageErr, for the mapping's test.
var StorageErr = storageErr

// BoundedContentType is boundedContentType, for the stream writer's fuzz test.
var BoundedContentType = boundedContentType

// LogLimitAllow runs a fresh logLimit over the given times, each with interval every, and
// returns what allow answered for each: -1 held back, else the count of held lines.
func LogLimitAllow(every time.Duration, at ...time.Time) []int {
	var l logLimit
	out := make([]int, len(at))
	for i, now := range at {
		ok, held := l.allow(now, every)
		out[i] = -1
		if ok {
			out[i] = held
		}
	}
	return out
}

// LagPresenceReads makes the store's direct reads of the presence bucket find nothing, as
// a replica behind its leader answers for a foreman that announced itself a moment ago.
func (s *Store) LagPresenceReads() { s.presence = laggingKV{s.presence} }

type laggingKV struct{ jetstream.KeyValue }

func (laggingKV) Get(context.Context, string) (jetstream.KeyValueEntry, error) {
	return nil, jetstream.ErrKeyNotFound
}

// CachedConsumers is how many queue consumers the store keeps.
func (s *Store) CachedConsumers() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.consumers)
}

// SpanMarks are the times the store measures spans within the process from: its targets
// cache's read and the first refusal of a job record's write (zero for none).
func (s *Store) SpanMarks() (targetsCached, recordsRefused time.Time) {
	s.tmu.Lock()
	targetsCached = s.tcacheAt
	s.tmu.Unlock()
	s.writes.records.mu.Lock()
	defer s.writes.records.mu.Unlock()
	return targetsCached, s.writes.records.since
}

// ShiftServerClock moves the store's reading of the NATS server's clock (ServerNow) on
// by d, as if d had passed on the server since every stamp it stored. Call it before the
// store is used.
func (s *Store) ShiftServerClock(d time.Duration) { s.serverShift = d }

// AttemptTimeout is attemptTimeout, the bound of one try on a store that may be replicated.
const AttemptTimeout = attemptTimeout

// AnswerWritesAfter makes the store's record writes and queue publishes be applied at
// once and answered only after latency, as a server busy with other work answers: a try
// bounded to less than latency gets its context's error when the bound runs out, though
// its write is stored; a try bounded to more gets the answer (at once: no test waits
// latency out).
func (s *Store) AnswerWritesAfter(latency time.Duration) {
	s.kv = &lateAnswerKV{KeyValue: s.kv, latency: latency}
	s.js = &lateAnswerJS{JetStream: s.js, latency: latency}
}

type lateAnswerKV struct {
	jetstream.KeyValue
	latency time.Duration
}

func (kv *lateAnswerKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	return answerAfter(ctx, kv.latency, func(ctx context.Context) (uint64, error) {
		return kv.KeyValue.Create(ctx, key, value, opts...)
	})
}

func (kv *lateAnswerKV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	return answerAfter(ctx, kv.latency, func(ctx context.Context) (uint64, error) {
		return kv.KeyValue.Update(ctx, key, value, rev)
	})
}

type lateAnswerJS struct {
	jetstream.JetStream
	latency time.Duration
}

func (js *lateAnswerJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	return answerAfter(ctx, js.latency, func(ctx context.Context) (*jetstream.PubAck, error) {
		return js.JetStream.PublishMsg(ctx, msg, opts...)
	})
}

// answerAfter runs write, whatever ctx's deadline (the server stores it), and returns its
// answer as a caller bounded by ctx hears an answer that takes latency: when ctx ends
// sooner, it gets ctx's error at its deadline instead.
func answerAfter[T any](ctx context.Context, latency time.Duration, write func(context.Context) (T, error)) (T, error) {
	dl, bounded := ctx.Deadline()
	late := bounded && time.Until(dl) < latency
	v, err := write(context.WithoutCancel(ctx))
	if late {
		<-ctx.Done()
		var zero T
		return zero, ctx.Err()
	}
	return v, err
}

// SubmitSeq is the queue message Submit stored for j, as CancelSubmitted reads it.
func SubmitSeq(j *Job) uint64 { return j.submitSeq }

// FailAcks makes every ack of delivery d fail with err, as a connection that drops the
// ack (or a leader election that outlasts its retries) would; the message stays
// delivered and un-acked.
func FailAcks(d *Lease, err error) { d.Msg = ackFailMsg{Msg: d.Msg, err: err} }

type ackFailMsg struct {
	jetstream.Msg
	err error
}

func (m ackFailMsg) Ack() error                          { return m.err }
func (m ackFailMsg) DoubleAck(ctx context.Context) error { return m.err }

// ReadQueueUnbatched has the store's queue reads ask what a server before 2.11 reads of
// them: no batch, one message a request.
func (s *Store) ReadQueueUnbatched() { s.unbatchedGets = true }

// NoteServerTime takes ts as a new reading of the NATS server's clock, as a stream info
// answer's time is taken.
func (s *Store) NoteServerTime(ts time.Time) { s.noteServerTime(ts) }

// OwnWritesKnown is how many state changes the store holds as its own (WroteState).
func (s *Store) OwnWritesKnown() int { return s.own.known() }
