package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Config builds a Store.
type Config struct {
	// Conn is the connection to NATS (embedded or external). Required.
	Conn *nats.Conn
	// JobTTL is how long finished jobs, their artifacts and never-run queue messages are
	// kept. Default 24h.
	JobTTL time.Duration
	// MaxQueue caps the jobs waiting in the queue; submits beyond it get ErrQueueFull.
	// Default 1000.
	MaxQueue int64
	// MaxAttempts is how many times a job may run; the queue consumers' MaxDeliver is a
	// safety net two above it. Default 3.
	MaxAttempts int
	// AckWait is how long a running job may go without InProgress before JetStream
	// redelivers it (after a crash). Default 60s.
	AckWait time.Duration
	// Replicas of every stream, bucket and store: 1 embedded, 3 on a cluster. Default 1.
	// On a shared NATS, those another foreman raised stay raised (ADR-0054).
	Replicas int
	// BootID names this start of foreman (a ULID, new at every start). The gateway stamps
	// it on the sync jobs it takes (Job.Gateway), so a sync job whose caller went down with
	// an earlier process can be told apart. Default: a new id.
	BootID string
	// Exclusive says no other foreman uses this store: the embedded server, whose data-dir
	// lock proves it. Open then makes the jobs a crashed process had taken deliverable at
	// once (no AckWait), and a sync job of any other boot id has lost its caller. Leave it
	// false on a shared NATS, where the AckWait and the other foremen's jobs are kept.
	Exclusive bool
	// PresenceTTL is how long a foreman counts as running after its last heartbeat
	// (Store.Announce beats every third of it). Default 30s.
	PresenceTTL time.Duration
	// TargetTTL is how long a target's entry in TargetsBucket lives after its last
	// refresh (see PublishTarget). Default 90s.
	TargetTTL time.Duration
	// DuplicateWindow is the queue's duplicate window: a job's queue message published
	// again within it (a retried write, an idempotent retry) is dropped. Default 10
	// minutes, at most JobTTL.
	DuplicateWindow time.Duration
	// RetryWindow is how long a read or write that meets an unavailable cluster (no
	// stream leader during an election, a reconnect) is retried before it fails with
	// ErrUnavailable. Default 5s.
	RetryWindow time.Duration
	// MaxAnswer bounds an attempt's answer, streamed or not: the worker keeps its frames
	// for the result, and a target streaming without end would fill its memory. Frames
	// beyond it are refused (ErrAnswerTooLarge); a frame counts as at least MinFrameCost
	// bytes. Default 64 MiB, the bound of a
	// non-streamed answer (ollama.MaxFrameSize).
	MaxAnswer int
	// ReaderWait bounds how long the answer of a sync job whose caller waits on another
	// foreman is held, from its first message, for want of word that the caller's
	// subscription reached this foreman's NATS server (StreamWriter.AwaitReader,
	// ADR-0072); past it the answer goes out all the same. Default 5s.
	ReaderWait time.Duration
	// ResendWait bounds each ask of a sync caller's feed for the messages of its answer
	// lost on the way (ADR-0078): the runner's node may be restarting, the route to it
	// re-forming. A feed asks at most maxResends times. Default 5s.
	ResendWait time.Duration
	// WriteFault, when set, reports a fault of the store's own server that keeps it from
	// storing the job records, the queue or the artifacts until it is restarted (the
	// embedded server: a stream whose write failed, as on a full disk, stores nothing
	// more and answers none of the publishes it fails). JobStreams names the streams it is to look at. It is
	// asked only after a write went unanswered, and then at most once a second while the
	// fault stands, never while an earlier ask still runs (it may hang on the disk): a
	// write then fails at once with ErrStoreFailed instead of retrying for RetryWindow.
	// A fault that may pass without a restart (a data directory that could not be
	// checked) is marked so with FaultMayPass: it is not worded, nor shown in a pause, as
	// one that lasts until foreman restarts (NeedsRestart).
	WriteFault func() error
	// Kinds are the job kinds this foreman runs; a queue message of another is a newer
	// foreman's (ErrUnknownKind, ADR-0061). Default Kinds, every kind this build knows;
	// tests set fewer to play a foreman from before a kind was added. Submit is not
	// bound by it.
	Kinds  []Kind
	Logger *slog.Logger
	// Now is the clock; tests may replace it.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Kinds == nil {
		c.Kinds = Kinds
	}
	if c.JobTTL <= 0 {
		c.JobTTL = 24 * time.Hour
	}
	if c.MaxQueue <= 0 {
		c.MaxQueue = 1000
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = 3
	}
	if c.AckWait <= 0 {
		c.AckWait = 60 * time.Second
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.BootID == "" {
		c.BootID = NewID()
	}
	if c.PresenceTTL <= 0 {
		c.PresenceTTL = defaultPresenceTTL
	}
	if c.TargetTTL <= 0 {
		c.TargetTTL = defaultTargetTTL
	}
	if c.MaxAnswer <= 0 {
		c.MaxAnswer = ollama.MaxFrameSize
	}
	if c.RetryWindow <= 0 {
		c.RetryWindow = defaultRetryWindow
	}
	if c.ResendWait <= 0 {
		c.ResendWait = defaultResendWait
	}
	if c.ReaderWait <= 0 {
		c.ReaderWait = defaultReaderWait
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Store is foreman's job store on JetStream: the queue, the job records and the artifacts.
// It is safe for concurrent use.
type Store struct {
	cfg       Config
	nc        *nats.Conn
	js        jetstream.JetStream
	queue     jetstream.Stream
	kv        jetstream.KeyValue
	jobs      jetstream.Stream // kv's stream
	writes    storeWrites
	fault     writeFault
	artifacts jetstream.ObjectStore
	presence  jetstream.KeyValue
	started   time.Time // by Store.clock: with the monotonic reading
	// queueSuspect says why the queue may have lost job messages to a damaged data
	// directory (checkDamage); "" when nothing says so.
	queueSuspect string
	log          *slog.Logger

	// inlineLimit is the largest request body carried in a queue message; larger ones go
	// to the object store, in chunks of chunkSize (putObject).
	inlineLimit int
	chunkSize   uint32
	// dup is the queue's duplicate window: a job's message published again within it is
	// dropped by its Nats-Msg-Id.
	dup time.Duration

	mu        sync.Mutex
	consumers map[string]cachedConsumer
	// unlisted are the queue keys with jobs at an exclusive start whose consumer the
	// server did not list (reclaim): the first create of each checks for a previous
	// consumer's state taken up from its directory (consumer, ADR-0024).
	unlisted map[string]bool
	// renewing, when set (tests), is called before an unlisted consumer that took up a
	// previous state is deleted to be made afresh.
	renewing func()

	// targets is TargetsBucket, opened on first use; tcache is Targets' last read.
	tmu      sync.Mutex
	targets  jetstream.KeyValue
	tcache   []Target
	tcacheAt time.Time
	tgen     uint64 // bumped when the bucket changed under tcache: a read begun before stays uncached
	clockOff bool   // this host's clock is off from the server's (checkClock)
	// trev is the revision of this store's last write of each target key; tconflict, the
	// other foremen found writing under one of them (TargetNameConflict).
	trev      map[string]uint64
	tconflict map[string]TargetNameConflict
	// tstopped are the target keys StopTarget marked stopped: no longer refreshed, left
	// to lapse (ownEntryLapsed passes over them).
	tstopped map[string]bool
	// treads numbers the Targets reads of the bucket as they begin; tcacheRead is the
	// number of the read in tcache: an older read ending later does not replace it.
	treads, tcacheRead uint64
	// targetsRead, when set (tests), is called between a read of the bucket and its caching.
	targetsRead func()
	// bodyRead, when set (tests), is called with a lease's job id as its fetch reads its
	// request body stored apart.
	bodyRead func(id string)

	// known is KnownModelsBucket, opened on first use.
	kmu   sync.Mutex
	known jetstream.KeyValue

	listMode listMode // tests only: force List's way of reading
	// listFetch (tests only) is called with the listing consumer's name before each of
	// its pulls.
	listFetch func(consumer string)
	// recordsRead (tests only) is called with the number of job records a listing is
	// about to read.
	recordsRead func(n int)
	// createdRecord (tests only) is called with the id of each record createRecord
	// stored; an error it returns is createRecord's answer instead, as a lost answer's.
	createdRecord func(id string) error
	// lookShift (tests only) moves the start of Resubmit's look in the queue, as a queue
	// leader's clock behind the jobs bucket leader's would.
	lookShift time.Duration
	// presenceTicks (tests only) replaces Announce's ticker of heartbeats.
	presenceTicks <-chan time.Time

	// states hands the job state events to OnJobEvents and OnJobChange.
	states stateHub
	// hooks are this Store's OnQueued callbacks: its submits hand them their queue
	// messages directly.
	hooks hooks[Published]
	// removedHooks are this Store's OnQueueRemoved callbacks.
	removedHooks hooks[uint64]
	// feeds are this Store's open JobFeeds: its StreamWriters hand them their messages
	// directly (ADR-0035).
	feeds localFeeds
	// own is the state changes this Store wrote (see WroteState).
	own ownWrites
	// sharedTTL is the queue's MaxAge as last seen on a shared NATS (see JobTTL).
	sharedTTL atomic.Int64
	// heldTTL is the longer max age Open kept on the streams of a store of its own whose
	// job TTL was lowered since, until ApplyJobTTL lowers it; 0 when none is held.
	heldTTL atomic.Int64
	// queueCfg is held (read) around a queue consumer's create and (write) around
	// ApplyJobTTL's update of the queue: nats-server 2.15 rewrites a stream's
	// configuration on an update while a consumer create on it reads it unlocked.
	queueCfg sync.RWMutex
	// sclock is the last reading of the NATS server's clock (ServerNow); serverShift
	// (tests only) moves it on, as time passing on the server would.
	sclock      atomic.Pointer[serverClock]
	serverShift time.Duration
	// ids makes job ids in order (NewID).
	ids idSource
	// unbatchedGets (tests only) leaves the batch out of the queue's direct gets, as a
	// server before 2.11 ignores it.
	unbatchedGets bool
}

// Open connects the store to JetStream, creating or updating the streams, bucket and
// object store so that start-up is idempotent.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Conn == nil {
		return nil, errors.New("broker: Config.Conn is required")
	}
	cfg.setDefaults()
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("broker: jetstream: %w", err)
	}
	s := &Store{cfg: cfg, nc: cfg.Conn, js: js, log: cfg.Logger, started: cfg.Now(), consumers: map[string]cachedConsumer{}}
	s.inlineLimit, s.chunkSize = bodyLimits(cfg.Conn.MaxPayload())

	dup := cfg.DuplicateWindow
	if dup <= 0 {
		dup = 10 * time.Minute
	}
	if dup > cfg.JobTTL {
		dup = cfg.JobTTL
	}
	s.dup = dup
	err = s.untilReady(ctx, "stream "+QueueStream, func(ctx context.Context) (err error) {
		qcfg := s.queueConfig(dup)
		if err := s.raiseToExisting(ctx, &qcfg); err != nil {
			return err
		}
		if err := s.holdLoweredTTL(ctx, QueueStream, &qcfg.MaxAge); err != nil {
			return err
		}
		if !cfg.Exclusive {
			s.sharedTTL.Store(int64(qcfg.MaxAge))
		}
		if s.queue, err = ensureStream(ctx, js, qcfg); err != nil {
			return err
		}
		info := s.queue.CachedInfo()
		s.noteServerTime(info.TimeStamp)
		if n := info.State.Msgs; qcfg.MaxMsgs > 0 && n > uint64(qcfg.MaxMsgs) {
			// A bound lowered below the queue's depth since the last start: every job
			// stays and runs (the queue discards new messages only), and submits are
			// refused until the depth falls below it, which without a word looks like a
			// fault (ADR-0101).
			s.log.Warn("the queue holds more jobs than FOREMAN_MAX_QUEUE (lowered?): they all stay and run; submits get 503 until fewer wait",
				"jobs", n, "max_queue", qcfg.MaxMsgs)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("broker: stream %s: %w", QueueStream, err)
	}
	err = s.untilReady(ctx, "bucket "+JobsBucket, func(ctx context.Context) (err error) {
		jcfg := s.jobsConfig()
		if err := s.raiseBucket(ctx, jobsStream, &jcfg.TTL, &jcfg.Replicas); err != nil {
			return err
		}
		if err := s.holdLoweredTTL(ctx, jobsStream, &jcfg.TTL); err != nil {
			return err
		}
		if s.kv, err = ensureKeyValue(ctx, js, jcfg); err != nil {
			return err
		}
		s.jobs, err = js.Stream(ctx, jobsStream)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("broker: bucket %s: %w", JobsBucket, err)
	}
	err = s.untilReady(ctx, "object store "+ArtifactsBucket, func(ctx context.Context) (err error) {
		acfg := s.artifactsConfig()
		if err := s.raiseBucket(ctx, "OBJ_"+ArtifactsBucket, &acfg.TTL, &acfg.Replicas); err != nil {
			return err
		}
		if err := s.holdLoweredTTL(ctx, "OBJ_"+ArtifactsBucket, &acfg.TTL); err != nil {
			return err
		}
		s.artifacts, err = ensureObjectStore(ctx, js, acfg)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("broker: object store %s: %w", ArtifactsBucket, err)
	}
	if err := s.openPresence(ctx); err != nil {
		return nil, err
	}
	if cfg.Exclusive {
		if err := s.checkDamage(ctx); err != nil {
			return nil, err
		}
		if err := s.reclaim(ctx); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// bodyLimits are the largest request body carried inline in a queue message and the
// chunk size of the objects stored, under a server's max payload (1 MiB by default):
// 64 KiB is left for a message's headers, or half of it on a server whose max payload
// is so small that that would leave less; and nats.go's chunks of 128 KiB would not fit
// in a message of a server whose max payload is 128 KiB or less.
func bodyLimits(maxPayload int64) (inline int, chunk uint32) {
	if maxPayload <= 0 {
		maxPayload = 1 << 20 // not told: nats-server's default
	}
	inline = int(max(maxPayload-64<<10, maxPayload/2))
	return inline, uint32(min(inline, 128<<10))
}

// putObject stores data as the object name in chunks that fit the server's max payload.
func (s *Store) putObject(ctx context.Context, name string, data []byte) error {
	meta := jetstream.ObjectMeta{Name: name, Opts: &jetstream.ObjectMetaOptions{ChunkSize: s.chunkSize}}
	_, err := s.artifacts.Put(ctx, meta, bytes.NewReader(data))
	return err
}

func (s *Store) queueConfig(dup time.Duration) jetstream.StreamConfig {
	cfg := s.cfg
	return jetstream.StreamConfig{
		Name:        QueueStream,
		Description: "foreman job queue: one subject per model, load options, class and program",
		Subjects:    []string{QueueWildcard},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Discard:     jetstream.DiscardNew,
		MaxMsgs:     cfg.MaxQueue,
		MaxAge:      cfg.JobTTL,
		Duplicates:  dup,
		AllowDirect: true,
		Replicas:    cfg.Replicas,
	}
}

func (s *Store) jobsConfig() jetstream.KeyValueConfig {
	cfg := s.cfg
	return jetstream.KeyValueConfig{
		Bucket:      JobsBucket,
		Description: "foreman job records",
		History:     16, // enough revisions for the webhook consumer to see every state of a job
		TTL:         cfg.JobTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		RePublish: &jetstream.RePublish{
			Source:      "$KV." + JobsBucket + ".job.*",
			Destination: "foreman.job.{{wildcard(1)}}.state",
		},
	}
}

func (s *Store) artifactsConfig() jetstream.ObjectStoreConfig {
	cfg := s.cfg
	return jetstream.ObjectStoreConfig{
		Bucket:      ArtifactsBucket,
		Description: "foreman job artifacts and large request bodies",
		TTL:         cfg.JobTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	}
}

// BootID is the id of this start of foreman (Config.BootID).
func (s *Store) BootID() string { return s.cfg.BootID }

// MaxDeliver is how many times JetStream delivers a queue message before it gives up: a
// safety net two above MaxAttempts, so the worker ends a job before JetStream would.
func (c Config) MaxDeliver() int { return c.MaxAttempts + 2 }

// Knows reports whether this foreman runs jobs of kind k (Config.Kinds).
func (s *Store) Knows(k Kind) bool { return k.Valid() && slices.Contains(s.cfg.Kinds, k) }

// Now is the store's clock.
func (s *Store) Now() time.Time { return s.cfg.Now().UTC() }

// Config returns the store's configuration with defaults filled in.
func (s *Store) Config() Config { return s.cfg }

// Submit stores a new job record and enqueues its request body. The record write and
// the queue publish go out together and Submit waits for both acknowledgements, so a
// submit costs one fsync of latency rather than two in a row (ADR-0031). A worker may
// therefore take the queue message a moment before the record is stored: it waits for
// a young message's record (Store.JobOf). Submitting the same job id twice is a no-op
// that returns the existing job: the queue deduplicates on Nats-Msg-Id.
//
// j.Model and j.Kind are required; an empty j.ID gets a new ULID; the state, attempt and
// times are set here.
func (s *Store) Submit(ctx context.Context, j *Job, body []byte) (*Job, error) {
	if j.ID == "" {
		j.ID = s.NewID()
	} else if err := ValidateID(j.ID); err != nil {
		return nil, err
	}
	if !j.Kind.Valid() {
		return nil, fmt.Errorf("broker: unknown job kind %q", j.Kind)
	}
	key, err := KeyOf(j, body)
	if err != nil {
		return nil, err
	}
	now := s.Now()
	j.State, j.Attempt, j.CreatedAt, j.At = StateQueued, 0, now, now
	j.StartedAt, j.FinishedAt, j.Error, j.Result, j.Artifacts = nil, nil, "", nil, nil

	if len(body) > s.inlineLimit {
		j.BodyRef = bodyRefOf(j.ID)
		if err := s.putBody(ctx, j.BodyRef, body); err != nil {
			return nil, fmt.Errorf("broker: store request body: %w", storageErr(err))
		}
	}
	rec, err := json.Marshal(j)
	if err != nil {
		return nil, err
	}
	if len(rec) > maxSubmitRecord {
		if j.BodyRef != "" {
			s.dropStoredBody(j)
		}
		return nil, fmt.Errorf("%w: its record would hold %d bytes, more than %d", ErrJobTooLarge, len(rec), maxSubmitRecord)
	}
	// The queue message goes out on its own goroutine while this one creates the record:
	// the two streams store (and fsync) them in parallel. A worker of this process is
	// woken first, from here.
	created := &createdRecord{done: make(chan struct{})}
	s.announce(j, key, body, created.wait)
	var (
		ack  *jetstream.PubAck
		qerr error
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		ack, qerr = s.publishQueued(ctx, j, key, body)
	}()
	var rev uint64
	cerr := s.retryWrite(ctx, func(ctx context.Context) (err error) {
		rev, err = s.createRecord(ctx, j, rec)
		return err
	})
	created.settle(rec, rev, cerr)
	s.writes.records.note(cerr, s.clock())
	<-done
	return s.settleSubmit(ctx, j, rec, cerr, ack, qerr)
}

// createRecord creates job j's record rec, as kv.Create does, with its state in
// HeaderRecordState: a listing of the finished jobs skips the waiting ones behind a deep
// queue by it, without reading each of their records (ADR-0025). A key that has a
// revision already (a delete marker, or the job) is left to kv.Create, which writes over
// the marker and answers ErrKeyExists for the job.
func (s *Store) createRecord(ctx context.Context, j *Job, rec []byte) (rev uint64, err error) {
	msg := nats.NewMsg("$KV." + JobsBucket + "." + jobKey(j.ID))
	msg.Header.Set(HeaderRecordState, string(j.State))
	msg.Data = rec
	ack, err := s.js.PublishMsg(ctx, msg, jetstream.WithExpectLastSequencePerSubject(0))
	if err == nil {
		rev = ack.Sequence
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		rev, err = s.kv.Create(ctx, jobKey(j.ID), rec)
	}
	if err == nil && s.createdRecord != nil {
		err = s.createdRecord(j.ID)
	}
	return rev, err
}

// createdRecord is a submit's record create as its announcement hands it to this
// process's worker (Published.Created): the record a create stored, without a read.
type createdRecord struct {
	done chan struct{}
	rec  []byte // the record stored, nil when the create failed
	rev  uint64
}

// settle tells the waiters how the create ended: rec stored at rev when err is nil.
func (c *createdRecord) settle(rec []byte, rev uint64, err error) {
	if err == nil && rev > 0 {
		c.rec, c.rev = rec, rev
	}
	close(c.done)
}

// wait is Published.Created.
func (c *createdRecord) wait(ctx context.Context) (*Job, uint64, bool) {
	select {
	case <-c.done:
	case <-ctx.Done():
		return nil, 0, false
	}
	if c.rec == nil {
		return nil, 0, false
	}
	j, err := DecodeJob(c.rec)
	if err != nil {
		return nil, 0, false
	}
	return j, c.rev, true
}

// maxSubmitRecord bounds a new job's record. Its fields from the caller are bounded one by
// one (model, webhook URL and events, program); this is the backstop, so that no record
// comes near a NATS message's limit, which every later write (the start, the result, a
// webhook's pending delivery) must fit under too.
const maxSubmitRecord = 16 << 10

// settleSubmit decides a submit from the outcomes of its two writes, taking back the one
// that stands alone: a record whose queue message was refused (a full queue) is
// discarded, and a queue message whose record could not be written is deleted, so no
// job is left half-made. A deletion that fails leaves a queue message without a record,
// which the worker drops once it is older than RecordGrace. rec is the record this submit
// wrote (or tried to).
func (s *Store) settleSubmit(ctx context.Context, j *Job, rec []byte, cerr error, ack *jetstream.PubAck, qerr error) (*Job, error) {
	// ours is the queue message this submit stored (not the one a duplicate matched).
	ours := qerr == nil && ack != nil && !ack.Duplicate
	switch {
	case cerr == nil && qerr == nil:
		if ours {
			j.submitSeq = ack.Sequence
		}
		return j, nil
	case cerr == nil:
		// Should the message have been stored after all (an ack lost to a timeout), the
		// worker drops it for want of a record; the caller was told the submit failed.
		s.discard(j)
		return nil, fmt.Errorf("broker: enqueue %s: %w", j.ID, storageErr(qerr))
	case !errors.Is(cerr, jetstream.ErrKeyExists):
		if Transient(cerr) || errors.Is(cerr, context.Canceled) || errors.Is(cerr, ErrStoreFailed) {
			// A try may have been stored though no answer came: then the job is whole
			// (or, with its message refused, must go), not a message to take back.
			rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, _, gerr := s.Get(rctx, j.ID)
			cancel()
			if gerr == nil {
				if qerr == nil {
					return j, nil
				}
				s.discard(j)
				return nil, fmt.Errorf("broker: enqueue %s: %w", j.ID, storageErr(qerr))
			}
		}
		if ours {
			s.unqueue(j, ack.Sequence)
		}
		if j.BodyRef != "" {
			s.dropStoredBody(j)
		}
		return nil, fmt.Errorf("broker: create job record: %w", storageErr(cerr))
	}
	// The job exists: a resubmit of the same id, or a create whose first try landed
	// unseen (a timeout during an election) and whose retry found it.
	existing, _, gerr := s.Get(ctx, j.ID)
	if errors.Is(gerr, ErrNotFound) {
		// The create met a record no replica shows: a try lost to a timeout during an
		// election that the cluster may still apply. Not a missing job: try later. The
		// message goes, as the caller is told to try again (an idempotent retry queues
		// it anew); should the record appear, it stays queued without one, as when a
		// crash comes between the two writes (see Resubmit).
		if ours {
			s.unqueue(j, ack.Sequence)
		}
		return nil, fmt.Errorf("broker: create job record %s: %w: the record is not readable yet", j.ID, ErrUnavailable)
	}
	if gerr != nil {
		return nil, gerr
	}
	if existing.State != StateQueued {
		// It ran already, or runs. The message published with this call is not taken
		// back: when our own create landed unseen, a worker may hold that very message
		// (deleting it would leave a running job nothing can hand back); a spare copy is
		// dropped by the worker (Job.IsSpare).
		return existing, nil
	}
	// Still queued: the message published with this call makes sure it has one (a crash
	// may have come between its record and its message); within the duplicate window the
	// queue dropped it, after it the worker drops the spare copy.
	if qerr != nil {
		if bytes.Equal(existing.raw, rec) {
			// The record is this submit's own, its create stored unseen, and its message
			// was refused: the caller hears that the submit failed (and gets its
			// idempotency key back), so the record goes, as when the create was answered.
			// Left, it would wait queued for a message nothing sends.
			s.discard(j)
		}
		return nil, fmt.Errorf("broker: enqueue %s: %w", j.ID, storageErr(qerr))
	}
	return existing, nil
}

// unqueue deletes queue message seq of job j that was stored without a record to go
// with it; should the deletion fail, the worker drops the message (see RecordGrace).
func (s *Store) unqueue(j *Job, seq uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.deleteQueueMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		s.log.Warn("delete queue message of a job without a record", "job_id", j.ID, "model", j.Model, "seq", seq, "err", err)
	}
}

// dropStoredBody deletes the stored request body of a job that was never created.
func (s *Store) dropStoredBody(j *Job) {
	s.deleteBody(context.Background(), j.ID, j.BodyRef)
}

func (s *Store) enqueue(ctx context.Context, j *Job, key QueueKey, body []byte) error {
	s.announce(j, key, body, nil)
	if _, err := s.publishQueued(ctx, j, key, body); err != nil {
		return fmt.Errorf("broker: enqueue %s: %w", j.ID, storageErr(err))
	}
	return nil
}

// publishQueued publishes job j's queue message, retrying through an unavailable
// cluster; the message id is the job id, so a retry that finds the first try stored is
// a duplicate (PubAck.Duplicate) rather than a second message.
func (s *Store) publishQueued(ctx context.Context, j *Job, key QueueKey, body []byte) (*jetstream.PubAck, error) {
	msg := nats.NewMsg(QueueSubject(key.String()))
	msg.Header.Set(HeaderJobID, j.ID)
	msg.Header.Set(HeaderPriority, string(key.Class))
	if j.Program != "" {
		msg.Header.Set(HeaderProgram, j.Program)
	}
	msg.Header.Set(HeaderModel, j.Model)
	msg.Header.Set(HeaderKind, string(j.Kind))
	if j.Gateway != "" {
		msg.Header.Set(HeaderGateway, j.Gateway)
	}
	if j.BodyRef != "" {
		msg.Header.Set(HeaderBodyRef, j.BodyRef)
	} else {
		msg.Data = body
	}
	var ack *jetstream.PubAck
	err := s.retryWrite(ctx, func(ctx context.Context) error {
		a, err := s.js.PublishMsg(ctx, msg, jetstream.WithMsgID(j.ID))
		if err == nil {
			ack = a
		}
		return err
	})
	s.writes.queue.note(err, s.clock())
	return ack, err
}

// announce wakes this Store's OnQueued callbacks with job j's queue message, ahead of its
// publish: a worker of this process starts now, not one NATS round trip later. They get
// a copy of body: the caller's may change once Submit returns, a worker may still read it.
func (s *Store) announce(j *Job, key QueueKey, body []byte, created func(context.Context) (*Job, uint64, bool)) {
	if !s.hooks.any() {
		return
	}
	p := Published{Token: key.String(), JobID: j.ID, Kind: j.Kind, Sync: j.Sync, Created: created}
	if j.BodyRef == "" {
		p.Body = bytes.Clone(body)
	}
	s.hooks.announce(p)
}

// discard removes a job that never made it into the queue.
func (s *Store) discard(j *Job) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.kv.Purge(ctx, jobKey(j.ID)); err != nil {
		s.log.Warn("discard job record", "job_id", j.ID, "err", err)
	}
	if j.BodyRef != "" {
		s.deleteBody(ctx, j.ID, j.BodyRef)
	}
}

// bodyRefOf names the object holding job id's request body when it is too large to queue.
func bodyRefOf(id string) string { return id + "/request" }

// storageErr turns JetStream's "stream full" and "no space" answers into ErrQueueFull and
// ErrStorageFull.
func storageErr(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case 10077: // JSStreamStoreFailedF: maximum messages/bytes exceeded under DiscardNew
			return fmt.Errorf("%w: %s", ErrQueueFull, apiErr.Description)
		case 10023, 10047, 10028, 10002: // insufficient resources; storage, memory, account limit
			return fmt.Errorf("%w: %s", ErrStorageFull, apiErr.Description)
		}
	}
	return err
}

// Get returns job id and the revision of its record.
func (s *Store) Get(ctx context.Context, id string) (*Job, uint64, error) {
	j, rev, _, err := s.GetWritten(ctx, id)
	return j, rev, err
}

// GetWritten is Get, with the time its record was written last (by the server's clock; a
// Refresh counts as a write).
func (s *Store) GetWritten(ctx context.Context, id string) (*Job, uint64, time.Time, error) {
	if err := ValidateID(id); err != nil {
		return nil, 0, time.Time{}, err
	}
	var e jetstream.KeyValueEntry
	err := s.retry(ctx, func(ctx context.Context) error {
		var err error
		e, err = s.kvGet(ctx, jobKey(id))
		return err
	})
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, 0, time.Time{}, fmt.Errorf("%w: %s", ErrNotFound, id)
		}
		return nil, 0, time.Time{}, fmt.Errorf("broker: get %s: %w", id, err)
	}
	j, err := DecodeJob(e.Value())
	if err != nil {
		return nil, 0, time.Time{}, err
	}
	return j, e.Revision(), e.Created(), nil
}

// retry runs fn until the cluster answers it, for up to Config.RetryWindow (see
// retrying); fn must be safe to repeat.
func (s *Store) retry(ctx context.Context, fn func(context.Context) error) error {
	return retrying(ctx, s.cfg.RetryWindow, s.tryBound(), fn)
}

// tryBound bounds each try of a retried call. A try cut at attemptTimeout leaves time in
// the window for the next, which a cluster needs: a request lost to a node that died, or
// sent while a stream has no leader, is never answered. The embedded server loses none (it
// runs in this process and elects no leader), so a try without an answer there has met a
// server busy with other work (a loaded CPU, a slow disk): it will answer, and a new try
// would only queue behind the first. There a try has the whole window.
func (s *Store) tryBound() time.Duration {
	if s.mayBeReplicated() {
		return attemptTimeout
	}
	return s.cfg.RetryWindow
}

// retryWrite is retry for a write of a job record or a queue message: it fails at once
// with ErrStoreFailed while Config.WriteFault reports a fault that no retry outlasts.
func (s *Store) retryWrite(ctx context.Context, fn func(context.Context) error) error {
	if err := s.fault.standing(s.cfg.WriteFault, s.clock()); err != nil {
		return err
	}
	return retrying(ctx, s.cfg.RetryWindow, s.tryBound(), func(ctx context.Context) error {
		err := fn(ctx)
		if Transient(err) {
			if ferr := s.fault.check(s.cfg.WriteFault, s.clock()); ferr != nil {
				return ferr
			}
		}
		return err
	})
}

// DecodeJob parses a job record (a KV value or a state event). The job keeps data (its
// rewrites carry what it holds that Job does not, laterFields): do not change it after.
func DecodeJob(data []byte) (*Job, error) {
	var j Job
	if err := json.Unmarshal(data, &j); err != nil {
		return nil, fmt.Errorf("broker: decode job: %w", err)
	}
	if err := storableTimes(j.At, j.CreatedAt, deref(j.StartedAt), deref(j.FinishedAt)); err != nil {
		return nil, fmt.Errorf("broker: decode job: %w", err)
	}
	j.raw = data
	return &j, nil
}

// storableTimes refuses a time that decodes but cannot be written back: encoding/json
// reads an offset of 24 hours ("+24:00") and time.Time.MarshalJSON refuses it, so a record
// holding one would fail every update made from it. Records foreman writes never hold one.
func storableTimes(ts ...time.Time) error {
	for _, t := range ts {
		if _, off := t.Zone(); off <= -24*60*60 || off >= 24*60*60 {
			return fmt.Errorf("time %s has a zone offset of 24 hours or more", t.Format(time.DateTime))
		}
	}
	return nil
}

// deref is the time p points to, or the zero time.
func deref(p *time.Time) time.Time {
	if p == nil {
		return time.Time{}
	}
	return *p
}
