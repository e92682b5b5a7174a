package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// writeRefusedFor is how long a stream may refuse every write before WriteHealth says
// so: far longer than a leader election (a few seconds), which is waited through.
const writeRefusedFor = 30 * time.Second

// refusalHeardFor is how long the latest refusal stays evidence that the store refuses:
// longer than a paused worker's probe cycle (a wait of up to 30 s, then a probe that may
// take its 10 s timeout on a store that answers no write), or /healthz turns ok for the
// span of each probe while every write is still refused.
const refusalHeardFor = time.Minute

// writeHealth follows whether one stream takes the writes of jobs: a disk that filled up
// makes the embedded server refuse them, and a stream that failed a write may go on
// refusing after space comes back, until foreman restarts. The job records and the queue
// are followed apart: one may take writes while the other refuses them.
type writeHealth struct {
	mu      sync.Mutex
	since   time.Time // the first refusal since the last write the stream took; zero then
	last    time.Time // the latest refusal
	lastErr error
}

// note records the outcome of a write. Only a store that refuses counts (unavailable, or
// out of room); any other answer, an existing key or a revision that moved on included,
// is the store working.
func (h *writeHealth) note(err error, now time.Time) {
	if errors.Is(err, context.Canceled) {
		return // the caller went: no answer either way
	}
	refused := Transient(err) || errors.Is(storageErr(err), ErrStorageFull) || errors.Is(err, ErrStoreFailed)
	h.mu.Lock()
	defer h.mu.Unlock()
	if !refused {
		h.since, h.last, h.lastErr = time.Time{}, time.Time{}, nil
		return
	}
	if h.since.IsZero() {
		h.since = now
	}
	h.last, h.lastErr = now, err
}

// refusing reports refusals of every write for writeRefusedFor, the latest of them
// within the last refusalHeardFor: a refusal followed by no write at all for that long
// is no evidence that the store still refuses.
func (h *writeHealth) refusing(what string, now time.Time, shared bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.since.IsZero() || now.Sub(h.since) < writeRefusedFor || now.Sub(h.last) >= refusalHeardFor {
		return nil
	}
	if shared && !errors.Is(storageErr(h.lastErr), ErrStorageFull) && !errors.Is(h.lastErr, ErrStoreFailed) {
		// On a shared NATS a full disk is answered (insufficient resources); writes that
		// no one answers are a cluster without a leader for the stream (too few nodes up,
		// one frozen), which foreman waits out: no disk to free, nothing to restart.
		return fmt.Errorf("the job store has answered no write of %s for %s (last: %v): the NATS cluster has no leader "+
			"for it (too few of its nodes up, or one frozen) or does not answer; foreman goes on by itself once it does",
			what, now.Sub(h.since).Round(time.Second), h.lastErr)
	}
	return fmt.Errorf("the job store has refused every write of %s for %s (last: %v); is its disk full? once there is room, a store that still refuses needs foreman restarted", what, now.Sub(h.since).Round(time.Second), h.lastErr)
}

// storeWrites are the writeHealth of the job records and of the queue.
type storeWrites struct{ records, queue writeHealth }

// WriteHealth reports a store that has refused every write of job records, or every
// publish to the queue, for longer than writeRefusedFor and still does: submits get
// 503, and the worker can neither start nor end a job. Writes of artifacts, webhook
// deliveries and idempotency keys are not followed.
func (s *Store) WriteHealth() error {
	now := s.clock()
	shared := !s.cfg.Exclusive
	return errors.Join(s.writes.records.refusing("job records", now, shared), s.writes.queue.refusing("the queue", now, shared))
}

// probeSize is about a job record's size: a write that small may fit where a record does
// not (an account's storage limit counts the message's bytes), and would then say the
// store takes writes while the worker's own still fail.
const probeSize = 2 << 10

// ProbeWrite writes this process's probe key (probe.<boot id>) in the jobs bucket, where
// job records are written: a worker paused by a store that refused its writes learns
// from it that the store takes them again.
func (s *Store) ProbeWrite(ctx context.Context) error {
	if err := s.fault.standing(s.cfg.WriteFault, s.clock()); err != nil {
		return fmt.Errorf("broker: probe write: %w", err)
	}
	v := append([]byte(s.Now().UTC().Format(time.RFC3339Nano)+" "), bytes.Repeat([]byte{'.'}, probeSize)...)
	_, err := s.kv.Put(ctx, "probe."+s.cfg.BootID, v)
	if Transient(err) {
		if ferr := s.fault.check(s.cfg.WriteFault, s.clock()); ferr != nil {
			err = ferr
		}
	}
	s.writes.records.note(err, s.clock())
	if err != nil {
		return fmt.Errorf("broker: probe write: %w", storageErr(err))
	}
	return nil
}

// CheckWriteFault asks Config.WriteFault now, as a write that went unanswered does: a
// fault it reports fails every write at once from then on (ErrStoreFailed), until it is
// reported gone. For a fault a watch finds rather than a write (a data directory
// removed under a server that goes on taking writes). It returns the fault, or nil.
func (s *Store) CheckWriteFault() error { return s.fault.check(s.cfg.WriteFault, s.clock()) }

// WriteFault is the fault every write fails with now (ErrStoreFailed, from
// Config.WriteFault), nil when none is known. It asks nothing.
func (s *Store) WriteFault() error {
	if !s.fault.known.Load() {
		return nil
	}
	s.fault.mu.Lock()
	defer s.fault.mu.Unlock()
	return s.fault.err
}

// WriteFaultSince is when the fault WriteFault returns was first reported (the time of
// the check that found it); zero when none is known.
func (s *Store) WriteFaultSince() time.Time {
	if !s.fault.known.Load() {
		return time.Time{}
	}
	s.fault.mu.Lock()
	defer s.fault.mu.Unlock()
	return s.fault.since
}

// errNeedsRestart marks a fault (ErrStoreFailed) that only a restart of foreman ends.
var errNeedsRestart = errors.New("until foreman restarts")

// NeedsRestart reports whether err is a write refused for a store fault that only a
// restart of foreman ends (ErrStoreFailed: a stream that failed a write, a data directory
// removed), not one marked FaultMayPass.
func NeedsRestart(err error) bool { return errors.Is(err, errNeedsRestart) }

// FaultMayPass marks a fault Config.WriteFault reports as one that may pass without a
// restart (a data directory that could not be checked, which a later check may find in
// place): writes fail while it stands, as for any fault, but nothing says that only a
// restart ends it. nil stays nil.
func FaultMayPass(err error) error {
	if err == nil {
		return nil
	}
	return passingFault{err}
}

type passingFault struct{ error }

func (p passingFault) Unwrap() error { return p.error }

// writeFault remembers a fault reported by Config.WriteFault, so that while it stands
// each write fails at once (ErrStoreFailed) instead of waiting out RetryWindow for
// answers that never come. A store without a fault pays one atomic load per write.
type writeFault struct {
	known atomic.Bool // a fault was reported and not yet seen gone
	mu    sync.Mutex
	err   error     // the fault, wrapped in ErrStoreFailed; nil when none
	at    time.Time // when report was last asked
	since time.Time // when the standing fault was first reported; zero without one
	// asking is set while a report runs, and closed once it returned and its answer is
	// kept. No other report starts meanwhile: one that hangs on the disk would otherwise
	// be joined by another each second, each holding a goroutine (and a thread, in a
	// system call) for as long as the disk hangs.
	asking chan struct{}
}

// faultRecheck is how often a fault is asked about again; faultAsk bounds the wait for
// an answer (the server's health check reads the disk, which may hang): none counts as
// no fault, and the write goes on as before.
const (
	faultRecheck = time.Second
	faultAsk     = time.Second
)

// check asks report (when set) whether the store has a fault, after a write went
// unanswered, unless it was asked within faultRecheck; it returns the fault wrapped in
// ErrStoreFailed, or nil.
func (f *writeFault) check(report func() error, now time.Time) error {
	if report == nil {
		return nil
	}
	return f.ask(report, now)
}

// standing returns the fault reported last, asking report again once it is
// faultRecheck old; nil when there is none.
func (f *writeFault) standing(report func() error, now time.Time) error {
	if report == nil || !f.known.Load() {
		return nil
	}
	return f.ask(report, now)
}

// ask runs report unless one runs or ran within faultRecheck, and waits faultAsk for
// its answer. An answer that comes later is kept when it comes; until then what was
// known stands.
func (f *writeFault) ask(report func() error, now time.Time) error {
	f.mu.Lock()
	if f.asking != nil || !f.at.IsZero() && now.Sub(f.at) < faultRecheck {
		defer f.mu.Unlock()
		return f.err // many writes failing at once ask once
	}
	f.at = now
	done := make(chan struct{})
	f.asking = done
	f.mu.Unlock()

	go func() {
		err := report()
		f.mu.Lock()
		f.asking = nil
		f.keep(err)
		f.mu.Unlock()
		close(done)
	}()
	t := time.NewTimer(faultAsk)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	// No answer yet leaves what was known: no fault stays none (a slow check of a healthy
	// disk refuses no write), and a fault reported stands, as an unanswered check says
	// nothing of its going (under load a check took longer than faultAsk, and a large
	// submit then waited out its body's put, seconds, for the same 503).
	return f.err
}

// keep stores report's answer err. Call with f.mu held.
func (f *writeFault) keep(err error) {
	// The fault is the store's, not the failed write's own: a record write fails for the
	// queue stream's write error too, since a job needs both. Only a fault that lasts
	// until a restart is worded so: one that may pass (a data directory that could not
	// be checked) is said to hold for now.
	var passing passingFault
	if err != nil && f.err == nil {
		f.since = f.at
	}
	switch {
	case err == nil:
		f.err, f.since = nil, time.Time{}
	case errors.As(err, &passing):
		f.err = fmt.Errorf("%w for now (the store's fault, which may pass: %v)", ErrStoreFailed, err)
	default:
		// The fault itself wrapped too: its cause (syscall.EROFS) words the refusal.
		f.err = fmt.Errorf("%w %w (the store's fault: %w)", ErrStoreFailed, errNeedsRestart, err)
	}
	f.known.Store(f.err != nil)
}
