package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrUnavailable is (wrapped in) the error of a store call that failed because JetStream
// could not answer for a while: a cluster electing a stream leader after a node left, a
// connection reconnecting to another node, a server (the embedded one too) too busy to
// answer in time. The same call may well succeed a few seconds later; the gateway
// answers it with 503 and Retry-After. Its words name no cluster alone: on the embedded
// server "electing a leader" sent an operator looking for a cluster there is none of.
var ErrUnavailable = errors.New("JetStream unavailable for now (a NATS cluster electing a leader, or a server too busy to answer)")

// Retry windows for calls that meet an unavailable cluster (see ADR-0030): reads and the
// gateway's writes retry briefly and then give up with ErrUnavailable, so a client is
// answered 503 in seconds; the worker's writes that end a job retry longer on top of that.
const (
	defaultRetryWindow = 5 * time.Second
	retryFirst         = 50 * time.Millisecond
	retryMax           = time.Second
	// attemptTimeout bounds each try on a store that may be replicated, so one request
	// lost to a dying node leaves time for the next within the window (on the embedded
	// server a try has the whole window: Store.tryBound); artifactAttempt bounds each try
	// of an object put, whose chunks are many publishes.
	attemptTimeout  = 2 * time.Second
	artifactAttempt = 10 * time.Second
)

// Transient reports whether err says JetStream could not answer for now, rather than
// that the request was wrong: no responders (no stream leader), a timeout, a connection
// that is reconnecting, or the server's "cluster not available" answers.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrUnavailable) {
		return true
	}
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, jetstream.ErrNoHeartbeat),
		// A pull request cut by a consumer's leader election or its server's shutdown
		// (a 409 of the batch): the next pick asks the new leader.
		errors.Is(err, jetstream.ErrConsumerLeadershipChanged), errors.Is(err, jetstream.ErrServerShutdown):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case 10008, // JetStream system temporarily unavailable
			10009, // JetStream cluster can not handle request (not the leader)
			10007, // JetStream cluster not assigned to this server
			10004, // incomplete results
			10118, // stream is offline
			10167: // too many requests: the stream's queue of pending writes is full (a burst of large bodies)
			return true
		}
	}
	return false
}

// TimedOut reports a write that got no answer in time (NATS's timeout or a context's
// deadline), rather than a store's refusal: out of room (ErrStorageFull), a known write
// fault (ErrStoreFailed) or no stream leader.
func TimedOut(err error) bool {
	if errors.Is(err, ErrStorageFull) || errors.Is(err, ErrStoreFailed) {
		return false
	}
	return errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded)
}

// startupTransient reports whether a set-up call failed because the cluster is not
// ready yet: the transient errors, and a fresh cluster without enough peers (or their
// resources) known for the replicas asked for.
func startupTransient(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case 10005, // no suitable peers for placement
			10023: // insufficient resources
			return true
		}
	}
	return Transient(err)
}

// unavailable wraps a transient error in ErrUnavailable; others pass unchanged.
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || !Transient(err) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// retrying calls fn until it returns nil or a non-transient error, backing off between
// tries, for up to window (bounded by ctx). Each try gets its own shorter deadline,
// attempt. The
// last transient error comes back wrapped in ErrUnavailable. fn must be safe to repeat:
// every write foreman retries is a revision-checked update, a create, or a publish with
// a message id, so a try that landed unseen fails the next try instead of writing twice.
func retrying(ctx context.Context, window, attempt time.Duration, fn func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	delay := retryFirst
	for {
		actx, acancel := context.WithTimeout(ctx, attempt)
		err := fn(actx)
		acancel()
		if !Transient(err) {
			return err
		}
		if ctx.Err() != nil {
			return unavailable(err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return unavailable(err)
		case <-t.C:
		}
		delay = min(2*delay, retryMax)
	}
}

// Start-up waits for a cluster that is not ready yet (a fresh one still forming, a node
// short, a leader being elected): each set-up call is retried with a growing pause until
// ctx ends, with a log line at each wait.
const (
	setupAttempt  = 10 * time.Second
	setupFirst    = 250 * time.Millisecond
	setupMaxPause = 5 * time.Second
)

// UntilReady calls fn until it succeeds, fails for another reason than a cluster that is
// not ready (Transient, or a fresh cluster short of peers for the replicas asked for), or
// ctx ends. Each try is bounded to 10 s; each failed one is logged on log at Warn
// ("waiting for the NATS cluster: " + what), and the pause before the next grows from
// 250 ms to 5 s. Open sets the store up with it, and the long-running parts on the store
// start with it, so that a leader election at start delays foreman rather than ending it
// (ADR-0030). fn must be safe to repeat.
func UntilReady(ctx context.Context, log *slog.Logger, what string, fn func(context.Context) error) error {
	pause := setupFirst
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, setupAttempt)
		err := fn(actx)
		cancel()
		if err == nil || !startupTransient(err) || ctx.Err() != nil {
			return err
		}
		log.Warn("waiting for the NATS cluster: "+what, "err", err, "attempt", attempt, "retry_in", pause)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (gave up waiting for the NATS cluster: %w)", err, ctx.Err())
		case <-t.C:
		}
		pause = min(2*pause, setupMaxPause)
	}
}

// ErrNoJetStream is (wrapped in) the error of Open on a NATS server that runs without
// JetStream (nats-server without -js or a jetstream block) and has no cluster whose
// servers could answer for it: its JetStream API has no responders, as a cluster's has for
// a moment while it elects, and waiting would never end.
var ErrNoJetStream = errors.New("the NATS server runs without JetStream")

// noJetStreamFor is how long a server without JetStream of its own must have no JetStream
// API in reach before Open gives up on it: a leaf node that uses its hub's JetStream, and
// announces no cluster (it has no server_name), looks the same, and its hub may be out of
// reach only for a moment.
const noJetStreamFor = 3 * time.Second

// noSuitablePeers is nats-server's error code for a stream it found no servers to place
// the replicas of (JSClusterNoPeersErrF).
const noSuitablePeers jetstream.ErrorCode = 10005

// insufficientResources is nats-server's error code for a write or a stream past its
// storage limits (JSInsufficientResourcesErr).
const insufficientResources jetstream.ErrorCode = 10023

// noRoomAtStart is what an operator is told of a start on an embedded server out of room.
const noRoomAtStart = "the embedded NATS server has no room left for foreman's writes " +
	"(its storage limit is set when it starts, from the space then free on the disk of FOREMAN_DATA_DIR: " +
	"what its store holds plus 75 % of it); free space on that disk and start foreman again"

// untilReady is UntilReady for the store's set-up, which knows its connection and
// replicas: a server without JetStream fails (ErrNoJetStream) once it has gone without a
// JetStream API for noJetStreamFor, a cluster that places no replicas is waited for
// with the setting named as the likely cause, and a store of its own (Exclusive) out of
// room fails at once (ErrStorageFull), as no cluster is forming there.
func (s *Store) untilReady(ctx context.Context, what string, fn func(context.Context) error) error {
	var without time.Time // since when the server has had no JetStream in reach, in a row
	return UntilReady(ctx, s.log, what, func(ctx context.Context) error {
		err := fn(ctx)
		if !errors.Is(err, nats.ErrNoResponders) || !noJetStream(s.nc) {
			without = time.Time{}
		} else if cluster := s.nc.ConnectedClusterName(); cluster != "" {
			// Its JetStream API is its cluster's: the servers that run it answer for it
			// once they are reached, or once they have elected a leader. (A leaf node with
			// a server_name announces a cluster of that name: it waits for its hub so.)
			return fmt.Errorf("%w (this NATS server runs without JetStream: waiting for those of its cluster %q that run it)", err, cluster)
		} else if without.IsZero() {
			without = time.Now()
		} else if time.Since(without) >= noJetStreamFor {
			// The answer is kept as text only: wrapped, it would count as transient.
			return fmt.Errorf("%w (no JetStream answered it for %s: %v; a leaf node gets here too while its hub is out of reach)",
				ErrNoJetStream, noJetStreamFor, err)
		}
		var apiErr *jetstream.APIError
		if s.cfg.Exclusive && errors.As(err, &apiErr) && apiErr.ErrorCode == insufficientResources {
			// A store of its own forms no cluster: it is out of room, and the embedded
			// server fixed its limit at start from the disk space then free, so no room
			// made meanwhile ends the wait. The answer is kept as text only: wrapped, it
			// would count as transient.
			return fmt.Errorf("%w: %v: %s", ErrStorageFull, err, noRoomAtStart)
		}
		if s.cfg.Replicas > 1 && errors.As(err, &apiErr) && apiErr.ErrorCode == noSuitablePeers {
			// A cluster forming answers so until its servers are known, and one of fewer
			// servers than the replicas always: the server cannot say which.
			return fmt.Errorf("%w (FOREMAN_NATS_REPLICAS=%d: more replicas than the cluster has JetStream servers?)",
				err, s.cfg.Replicas)
		}
		return err
	})
}

// noJetStream reports whether the server nc is on announced no JetStream (its INFO's
// "jetstream"). A cluster still electing announces it on every server that runs it; one
// that does not may still forward requests to those, and a leaf node to its hub's. Read
// while reconnecting, the flag is off for any server, so the connection must be up on
// both sides of it.
func noJetStream(nc *nats.Conn) bool {
	if !nc.IsConnected() {
		return false
	}
	on, _ := nc.ConnectedServerJetStream()
	return !on && nc.IsConnected()
}
