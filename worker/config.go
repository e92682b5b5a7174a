package worker

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama"
)

// Config builds a Worker.
type Config struct {
	// Store is the job store the worker takes jobs from. Required.
	Store *broker.Store
	// Target runs the jobs. Required.
	Target ollama.Client
	// Inventory, when set, tells which models are loaded on the target (/api/ps) and is
	// refreshed to probe a target that dropped a connection; without it the worker
	// assumes the model it ran last is loaded and probes with Target.Version.
	Inventory *ollama.Inventory
	// TargetBack, when set, tells the worker the target was seen to answer again (the
	// inventory's poll recovered: its OnRecover): a worker paused for an unreachable
	// target probes it at once instead of at its next probe, up to 30s away.
	TargetBack <-chan struct{}
	// TargetName is the name this foreman publishes its target under (FOREMAN_TARGET_NAME):
	// each start write names it, with the store's boot id, as the job's runner (ADR-0064).
	TargetName string
	// Runs, when set, says whether this worker takes jobs for a model (normalized name):
	// with several foremen on one NATS, each worker takes only the models its own target
	// has (ADR-0029). The others' jobs stay queued for them. Nil takes every model.
	Runs func(ctx context.Context, model string) bool
	// Elsewhere, when set, says whether another live foreman's reachable target has a
	// model (normalized name). A job whose attempt here was given up for the target's
	// silence (a stall, or no answer to the polls) is then left to that one for MaxWait:
	// this worker takes no job of its queue meanwhile, rather than take it back first at
	// the end of its back-off (ADR-0066). And only where it says so does the pick look
	// for the model's jobs another Mac runs (their queue messages head their queues, but
	// they wait no more: ADR-0027, amended 2026-12-06). Nil, or a store of its own: never.
	Elsewhere func(ctx context.Context, model string) bool
	// MaxConsecutive is how many jobs of one runner (model and load options) may run in a
	// row while other runners wait in the same class; default 8.
	MaxConsecutive int
	// MaxWait is how long a job may wait before it goes first whatever its class, and
	// how long it may be passed over (waiting since the current runner's streak began, or
	// since it came if later) before the worker switches to its model even though the
	// loaded one still has jobs; default 2m.
	MaxWait time.Duration
	// RetryDelay is the base of the exponential back-off after a connection error; default 1s.
	RetryDelay time.Duration
	// IdlePoll bounds an idle wait, for jobs whose retry back-off ends; default 1s.
	IdlePoll time.Duration
	// FirstByteTimeout bounds an attempt's wait for the first byte of the target's answer,
	// which comes only after a cold model load (minutes for a big model); default 5m,
	// negative means no limit. See ollama.FirstByteTimeout.
	FirstByteTimeout time.Duration
	// StreamIdleTimeout bounds the target's silence once its answer started; default 2m,
	// negative means no limit. See ollama.IdleTimeout.
	StreamIdleTimeout time.Duration
	// TargetSilence gives up an attempt that has had no byte of answer (since its start,
	// or its last byte) for this long while the Inventory's polls went unanswered as long
	// (refused, reset, no answer: not an error status): Ollama hangs as a whole, and the
	// first-byte limit (for a call that does not stream, NonStreamTimeout), or mid-answer
	// the idle limit, would hold the job for minutes. The attempt counts as a stall: the
	// job is retried (another Mac with its model may take it; a sync job with part of its
	// answer sent fails) and the worker pauses until its target answers (ADR-0049). Zero,
	// or no Inventory: no such limit. foreman serve sets FOREMAN_SYNC_OUTAGE_WAIT.
	TargetSilence time.Duration
	// MaxJobTime bounds one attempt as a whole, however steadily the target streams;
	// 0 (the default) means no limit.
	MaxJobTime time.Duration
	// NonStreamTimeout bounds an attempt that does not stream (embeddings, OpenAI's image
	// routes, a debug render): its first byte comes only with the whole answer, so the first-byte limit
	// does not apply to it; this one covers the load plus the whole answer. A chat,
	// completion, response or message its caller asked not to stream is called streamed
	// and its answer assembled (ADR-0050): the first-byte and idle limits bound it instead. When it runs out the
	// job fails without a retry. Default 30m, negative means no limit.
	NonStreamTimeout time.Duration
	Logger           *slog.Logger
	// StartBeforeCall makes each attempt's start write be stored before the target is
	// called, instead of riding with the call (ADR-0032). Set it on a shared NATS
	// cluster: there a start write can fail for the seconds a leader election takes,
	// and a call already made would be aborted and made again later (the target reached
	// twice, a model maybe loaded for nothing). foreman serve sets it when it does not
	// run the embedded server.
	StartBeforeCall bool
	// EarlyCall lets an idle worker begin a job's target call the moment it sees the
	// job's queue message published, before the message is stored and leased, when
	// nothing else is queued and the job's model is loaded (ADR-0034). The frames still
	// wait for the lease and the stored start; a job that is not to run drops the call
	// unseen. Only for a worker that is its store's one taker (the embedded server):
	// elsewhere another foreman may take the message, and the target would be called
	// for a job run on another. foreman serve sets it with the embedded server.
	EarlyCall bool
	// Trace, when set, is told each stage a job's run reaches (the Stage* constants) the
	// moment it does, for benchmarks and debugging. It runs on the hot path, from several
	// goroutines (the connection's dispatcher among them): it must be safe for concurrent
	// use, quick, and must not block. foreman serve leaves it nil.
	Trace func(jobID, stage string)

	// beforeStoreDone, when set (tests only, see export_test.go), runs in the background
	// bookkeeping of a finished job after its final done marker went out and before its
	// result and terminal state are written.
	beforeStoreDone func(jobID string)
	// beforeRefresh, when set (tests only), runs before each offer of a running job's
	// record to Store.Refresh; it may block, as a store slow to answer would.
	beforeRefresh func(jobID string)
	// beforeRetry, when set (tests only), runs before a failed attempt's retrying state
	// is written.
	beforeRetry func(jobID string)
	// retryingFault, when set (tests only), runs before each try of a failed attempt's
	// retrying write; an error it returns fails the try, as the store's would.
	retryingFault func(jobID string) error
	// probeDelay, when set (tests only), is the first pause between a paused worker's
	// probes in place of RetryDelay, which also delays the job handed back.
	probeDelay time.Duration
	// viewAfterHeads, when set (tests only), runs in QueueView once the queue heads'
	// records are read, before the view is computed from them.
	viewAfterHeads func()
	// viewClock, when set (tests only), is the clock QueueView reads to tell a view's age
	// and cost, in place of time.Now.
	viewClock func() time.Time
	// serverNow, when set (tests only: one that moves it, or a Worker made without a
	// store), is the NATS server's clock in place of the store's reading of it
	// (Store.ServerNow): the clock the picks run on.
	serverNow func() time.Time
	// outlivesQueue, when set (tests only), says a delivery's message may be gone
	// before a NAK's delay ends (Store.OutlivesQueue) when it returns true.
	outlivesQueue func(jobID string) bool
	// afterParked, when set (tests only), runs as each due of a kept delivery has been
	// dealt with (runParked), told whether the delivery is kept again.
	afterParked func(jobID string, kept bool)
	// beforeSweep, when set (tests only), runs at the start of the start's sweep (sweep),
	// before its reads; it may block to hold the sweep back.
	beforeSweep func()
	// beforeExpiry, when set (tests only), runs at the start of each expiry look, before
	// its reads; it may block to hold the look back.
	beforeExpiry func()
	// afterExpiry, when set (tests only), runs at the end of each expiry look, told the
	// jobs whose messages the look found stale, whatever it did with them.
	afterExpiry func(stale []string)
	// beforePresence, when set (tests only), runs as the expiry reads the presence of the
	// foreman a stale waiting record names as its runner (keptElsewhere).
	beforePresence func(bootID string)
	// beforeStart, when set (tests only, see export_test.go), runs in the background just
	// before an attempt's start write, while its target call goes out.
	beforeStart func(jobID string)
	// frameFault, when set (tests only), runs before each frame of an attempt is
	// published, with the count published before it; an error it returns is the
	// publish's own, as NATS failing it would be, and the frame is not published.
	frameFault func(jobID string, published int) error
	// startFault, when set (tests only), runs after beforeStart; an error it returns is
	// the start write's own, as a store failure would be, and nothing is written.
	startFault func(jobID string) error
	// endFault, when set (tests only), runs before each try to store the end (done with
	// its result, or failed) of a job whose final marker went out, or of one past its
	// delivery limit; an error it returns fails the try (retries included), as a store
	// down for longer than terminalWait would.
	endFault func(jobID string, state broker.State) error
	// recordFault, when set (tests only), runs before each read of a delivered job's
	// record (the one read ahead included); an error it returns is the read's own.
	recordFault func(jobID string) error
	// bodyFault, when set (tests only), runs for each job leased with its request body
	// read, and before each read of it again (Store.ReadBody); an error it returns is the
	// read's own, as the store failing it would be.
	bodyFault func(jobID string) error
	// limitReadFault, when set (tests only), runs before each try to read the queue
	// message of a job past its delivery limit; an error it returns is the read's own.
	limitReadFault func(seq uint64) error
	// resultFault, when set (tests only), runs before a finished job's result is written
	// to the object store; an error it returns is the write's own.
	resultFault func(jobID string) error
	// giveBackFault, when set (tests only), runs before each try to give back the attempt
	// of a start write whose answer was lost (giveStartBack); an error it returns is the
	// try's own, as the store's would be.
	giveBackFault func(jobID string) error
	// requeueFault, when set (tests only), runs before each requeue of a delivered job; an
	// error it returns is the requeue's own, as the store's would be, and nothing is
	// written.
	requeueFault func(jobID string) error
	// terminalWait, when set (tests only), replaces the const terminalWait: how long a
	// write through a store that refuses for now is tried before it is given up.
	terminalWait time.Duration
	// startAnswerLost, when set (tests only), runs after a start write was stored; true
	// makes it report a failure all the same, as a write whose answer was lost.
	startAnswerLost func(jobID string) bool
	// onIdle, when set (tests only), is told each time the loop begins to wait for a
	// wake-up, with the longest it waits unless one comes: the short rechecks after a job
	// (while its message is still queued) or the long idle wait.
	onIdle func(wait time.Duration)
	// maxAttempts is how many times a job may start: the store's MaxAttempts (which also
	// sets its queue's MaxDeliver), so the limit is configured in one place. Tests may
	// set it apart from the store's (see export_test.go).
	maxAttempts int
	// learnedMax replaces maxLearnedModels, the models the worker learns about before it
	// forgets those the target lists no more, in tests.
	learnedMax int
}

// Defaults of the limits on a silent target.
const (
	DefaultFirstByteTimeout  = 5 * time.Minute
	DefaultStreamIdleTimeout = 2 * time.Minute
	DefaultNonStreamTimeout  = 30 * time.Minute
)

const (
	maxRetryDelay = time.Minute
	// maxBusyWait bounds the worker's wait after the target's "not now" (ADR-0086).
	maxBusyWait = 30 * time.Second
	// maxPickRetry bounds the wait after a failed pick of the next job (the store not
	// answering: NATS unreachable, a leader election): the worker is back to work within
	// it once NATS is, not after a back-off grown to a minute over a long outage. A pick
	// that fails costs one request, and its failures are logged once per 10 s.
	maxPickRetry = 5 * time.Second
	// resultInlineLimit is the largest result kept in the job record itself.
	resultInlineLimit = 64 << 10
	// storeTimeout bounds the record writes that end an attempt or hand a job back after
	// the run context ended: long enough for a terminal write to outlast a leader
	// election (terminalWait) and still ack.
	storeTimeout = 30 * time.Second
	// terminalWait is how long a terminal write keeps trying through an unavailable
	// cluster before the job is handed back (ADR-0030).
	terminalWait = 20 * time.Second
	// terminalPause is the first pause between terminal-write tries; it doubles up to 2s.
	terminalPause = 100 * time.Millisecond
	// goneWait is how long a record write keeps trying once the record is not found: a
	// missing record is one that was purged and stays gone (on a cluster the stream's
	// leader answers a read a replica behind found nothing for, broker/leaderget.go), and
	// terminalWait spent on it would hold the worker (whichever step writes it) behind a
	// write no try can store.
	goneWait = 2 * time.Second
)

func (c *Config) setDefaults() {
	if c.learnedMax <= 0 {
		c.learnedMax = maxLearnedModels
	}
	if c.MaxConsecutive <= 0 {
		c.MaxConsecutive = 8
	}
	if c.MaxWait <= 0 {
		c.MaxWait = 2 * time.Minute
	}
	if c.RetryDelay <= 0 {
		c.RetryDelay = time.Second
	}
	if c.IdlePoll <= 0 {
		c.IdlePoll = time.Second
	}
	if c.FirstByteTimeout == 0 {
		c.FirstByteTimeout = DefaultFirstByteTimeout
	}
	if c.StreamIdleTimeout == 0 {
		c.StreamIdleTimeout = DefaultStreamIdleTimeout
	}
	if c.NonStreamTimeout == 0 {
		c.NonStreamTimeout = DefaultNonStreamTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("worker: Config.Store is required"))
	}
	if c.Target == nil {
		errs = append(errs, errors.New("worker: Config.Target is required"))
	}
	if c.EarlyCall && c.StartBeforeCall {
		errs = append(errs, errors.New("worker: Config.EarlyCall calls the target before the start is stored; it cannot go with StartBeforeCall"))
	}
	if c.MaxJobTime < 0 {
		errs = append(errs, errors.New("worker: Config.MaxJobTime must not be negative"))
	}
	if c.TargetSilence < 0 {
		errs = append(errs, errors.New("worker: Config.TargetSilence must not be negative"))
	}
	return errors.Join(errs...)
}

// streamOptions are the limits of one attempt's target call. A call that does not
// stream gets its first byte only with the whole answer: NonStreamTimeout bounds it
// instead of the first-byte limit (an assembled answer's call streams: targetCall).
func (c *Config) streamOptions(streams bool) []ollama.StreamOption {
	firstByte := max(c.FirstByteTimeout, 0)
	if !streams {
		firstByte = 0
	}
	return []ollama.StreamOption{
		ollama.FirstByteTimeout(firstByte),
		ollama.IdleTimeout(max(c.StreamIdleTimeout, 0)),
	}
}

// retryDelay is the NAK delay after attempt n (1-based) failed to reach the target.
func (c *Config) retryDelay(n int) time.Duration {
	d := c.RetryDelay
	for i := 1; i < n && d < maxRetryDelay; i++ {
		d *= 2
	}
	return min(d, maxRetryDelay)
}

// terminalWait is how long a write through a store that refuses for now is tried before
// it is given up (the const terminalWait; tests may shorten it).
func (w *Worker) terminalWait() time.Duration {
	if w.cfg.terminalWait > 0 {
		return w.cfg.terminalWait
	}
	return terminalWait
}

// maxLearnedModels is how many models the worker remembers what it learned of (their run
// and load times, the load options their runner last had) before it forgets those the
// target lists no more: far more than a Mac has installed.
const maxLearnedModels = 512

// listed reports whether the target lists model (its inventory's last model list); none
// is without an Inventory, whose worker forgets all it learned past maxLearnedModels.
func (c *Config) listed(model string) bool {
	return c.Inventory != nil && c.Inventory.HasModel(model)
}
