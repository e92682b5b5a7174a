package worker

import (
	"context"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// WithBeforeStoreDone returns cfg with a hook that runs after a job's final done marker
// is published and before its result and done state are written; it may block to hold
// that window open.
func WithBeforeStoreDone(cfg Config, fn func(jobID string)) Config {
	cfg.beforeStoreDone = fn
	return cfg
}

// WithMaxAttempts returns cfg with an attempt limit apart from the store's MaxAttempts
// (which also sets the queue's MaxDeliver), as when the queue was created with another
// limit than the one the worker runs with.
func WithMaxAttempts(cfg Config, n int) Config {
	cfg.maxAttempts = n
	return cfg
}

// WithBeforeStart returns cfg with a hook that runs just before an attempt's start write,
// while the attempt's target call goes out; it may block to hold the write back.
func WithBeforeStart(cfg Config, fn func(jobID string)) Config {
	cfg.beforeStart = fn
	return cfg
}

// WithStartFault sets Config.startFault: fn's error, if any, fails an attempt's start
// write as a store failure would.
func WithStartFault(cfg Config, fn func(jobID string) error) Config {
	cfg.startFault = fn
	return cfg
}

// WithDoneFault sets Config.endFault for done ends: fn's error, if any, fails a try to
// store a finished job's result and done state, its retries included.
func WithDoneFault(cfg Config, fn func(jobID string) error) Config {
	return WithEndFault(cfg, func(id string, state broker.State) error {
		if state != broker.StateDone {
			return nil
		}
		return fn(id)
	})
}

// WithEndFault sets Config.endFault: fn's error, if any, fails a try to store the end
// (state: done or failed) of a job whose final marker went out, its retries included.
func WithEndFault(cfg Config, fn func(jobID string, state broker.State) error) Config {
	cfg.endFault = fn
	return cfg
}

// WithStartAnswerLost sets Config.startAnswerLost: when fn says so, a start write that
// was stored reports a failure, as one whose answer was lost.
func WithStartAnswerLost(cfg Config, fn func(jobID string) bool) Config {
	cfg.startAnswerLost = fn
	return cfg
}

// Until polls cond until it holds, failing the test after within (the package's one
// polling helper, for its external tests too).
var Until = until

// WithResultFault sets Config.resultFault: fn's error, if any, fails the write of a
// finished job's result to the object store.
func WithResultFault(cfg Config, fn func(jobID string) error) Config {
	cfg.resultFault = fn
	return cfg
}

// PauseError is broker.PauseText: a pause's error as the queue view carries it.
func PauseError(err error) string { return broker.PauseText(err) }

// WithViewAfterHeads sets Config.viewAfterHeads: fn runs in each QueueView once the queue
// heads' records are read, before the view is computed from them.
func WithViewAfterHeads(cfg Config, fn func()) Config {
	cfg.viewAfterHeads = fn
	return cfg
}

// WithViewClock sets Config.viewClock: the clock QueueView tells a view's age and cost by.
func WithViewClock(cfg Config, now func() time.Time) Config {
	cfg.viewClock = now
	return cfg
}

// Own reports whether the job is this worker's own: running or finishing.
func (w *Worker) Own(id string) bool { return w.ownJobs()[id] }

// WithProbeDelay sets Config.probeDelay: the first pause between a paused worker's probes.
func WithProbeDelay(cfg Config, d time.Duration) Config {
	cfg.probeDelay = d
	return cfg
}

// WithLimitReadFault sets Config.limitReadFault: fn's error, if any, fails a try to read
// the queue message of a job past its delivery limit, its retries included.
func WithLimitReadFault(cfg Config, fn func(seq uint64) error) Config {
	cfg.limitReadFault = fn
	return cfg
}

// WithBeforeRetry sets Config.beforeRetry: fn runs before a failed attempt's retrying
// state is written.
func WithBeforeRetry(cfg Config, fn func(jobID string)) Config {
	cfg.beforeRetry = fn
	return cfg
}

// WithRetryingFault sets Config.retryingFault: fn's error, if any, fails a try of a
// failed attempt's retrying write.
func WithRetryingFault(cfg Config, fn func(jobID string) error) Config {
	cfg.retryingFault = fn
	return cfg
}

// WithOnIdle sets Config.onIdle: fn is told each time the loop begins to wait for a
// wake-up (after a pick that took no job), with the longest it waits.
func WithOnIdle(cfg Config, fn func(wait time.Duration)) Config {
	cfg.onIdle = fn
	return cfg
}

// Estimate is the worker's expected run and load time of a job of model.
func Estimate(w *Worker, model string) (run, load time.Duration) { return w.times.estimate(model) }

// WithServerClock sets Config.serverNow: fn is the NATS server's clock for the picks.
func WithServerClock(cfg Config, fn func() time.Time) Config {
	cfg.serverNow = fn
	return cfg
}

// WithFrameFault sets Config.frameFault: fn's error, if any, fails the publish of an
// attempt's frame (published: how many went out before it), as NATS failing it would.
func WithFrameFault(cfg Config, fn func(jobID string, published int) error) Config {
	cfg.frameFault = fn
	return cfg
}

// Stopping reports whether Stop was called.
func (w *Worker) Stopping() bool { return w.isStopping(context.Background()) }

// WithRecordFault sets Config.recordFault: fn's error, if any, fails a read of a
// delivered job's record, as the store failing it would.
func WithRecordFault(cfg Config, fn func(jobID string) error) Config {
	cfg.recordFault = fn
	return cfg
}

// WithBodyFault sets Config.bodyFault: fn's error, if any, fails a read of a leased job's
// request body, as the store failing it would.
func WithBodyFault(cfg Config, fn func(jobID string) error) Config {
	cfg.bodyFault = fn
	return cfg
}

// BusyInRow is w's count of the target's "not now" answers in a row, which sets its wait
// after the next one (ADR-0086).
func BusyInRow(w *Worker) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.busyInRow
}

// WithBeforeRefresh sets Config.beforeRefresh: fn runs before each offer of a running
// job's record to Store.Refresh, and may block it, as a slow store would.
func WithBeforeRefresh(cfg Config, fn func(jobID string)) Config {
	cfg.beforeRefresh = fn
	return cfg
}

// WithGiveBackFault sets Config.giveBackFault: fn's error, if any, fails a try to give
// back the attempt of a start write whose answer was lost.
func WithGiveBackFault(cfg Config, fn func(jobID string) error) Config {
	cfg.giveBackFault = fn
	return cfg
}

// WithTerminalWait sets Config.terminalWait: how long a write through a store that
// refuses for now is tried before it is given up (20 s otherwise).
func WithTerminalWait(cfg Config, d time.Duration) Config {
	cfg.terminalWait = d
	return cfg
}

// WithRequeueFault sets Config.requeueFault: fn's error, if any, fails a requeue of a
// delivered job, as the store's refusal would.
func WithRequeueFault(cfg Config, fn func(jobID string) error) Config {
	cfg.requeueFault = fn
	return cfg
}

// WithAfterParked sets Config.afterParked: fn runs as each due of a delivery kept for a
// full queue has been dealt with, told whether the delivery is kept again.
func WithAfterParked(cfg Config, fn func(jobID string, kept bool)) Config {
	cfg.afterParked = fn
	return cfg
}

// WithOutlivesQueue sets Config.outlivesQueue: fn true says job's message may be gone
// before a NAK's delay ends, as one near the job TTL may.
func WithOutlivesQueue(cfg Config, fn func(jobID string) bool) Config {
	cfg.outlivesQueue = fn
	return cfg
}

// WithAfterExpiry sets Config.afterExpiry: fn runs at the end of each expiry look, told
// the jobs whose queue messages the look found stale (broker.StaleAge), ended or not.
func WithAfterExpiry(cfg Config, fn func(stale []string)) Config {
	cfg.afterExpiry = fn
	return cfg
}

// WithBeforePresence sets Config.beforePresence: fn runs as the expiry reads the presence
// of another foreman a stale waiting record names as its runner.
func WithBeforePresence(cfg Config, fn func(bootID string)) Config {
	cfg.beforePresence = fn
	return cfg
}

// WithBeforeSweep sets Config.beforeSweep: fn runs at the start of the start's sweep (the
// sync jobs of dead callers, the records without a queue message), and may block it.
func WithBeforeSweep(cfg Config, fn func()) Config {
	cfg.beforeSweep = fn
	return cfg
}

// OnRunsGoroutine reports whether the caller runs on Run's own goroutine, which it holds
// while it runs (not on one Run started).
var OnRunsGoroutine = onRunsGoroutine
