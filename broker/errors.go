package broker

import (
	"errors"

	"github.com/nats-io/nats.go/jetstream"
)

// Errors callers map to behaviour (and the gateway to HTTP status).
var (
	ErrNotFound    = errors.New("job not found")
	ErrQueueFull   = errors.New("queue full")
	ErrStorageFull = errors.New("storage full")
	// ErrStoreFailed is a write refused by a store that will take none until it is
	// restarted (Config.WriteFault: the embedded server's stream that failed a write, on a
	// disk that filled up).
	ErrStoreFailed       = errors.New("job store cannot write")
	ErrConflict          = errors.New("job was changed concurrently (revision mismatch)")
	ErrIllegalTransition = errors.New("illegal state transition")
	ErrTerminal          = errors.New("job already finished")
	ErrBadID             = errors.New("invalid job id")
	ErrBadArtifactName   = errors.New("invalid artifact name")
	ErrArtifactNotFound  = errors.New("artifact not found")
	// ErrJobTooLarge is a submit whose job record would pass maxSubmitRecord.
	ErrJobTooLarge = errors.New("job too large")
	// ErrUnusable is a queue message no job can be run from (no valid job id, another
	// model's subject, another job's body): foreman never enqueues one, so it is removed.
	ErrUnusable = errors.New("unusable queue message")
	// ErrUnknownKind is a job's queue message whose kind this foreman does not know
	// (Store.Knows): a newer foreman on the same NATS queued it. It is that foreman's to
	// run, not a message to remove (ADR-0061).
	ErrUnknownKind = errors.New("job kind unknown to this foreman")
)

// ErrBodyLost is (wrapped in) the error of a Lease whose large request body is gone from
// the object store: the job cannot run.
var ErrBodyLost = jetstream.ErrObjectNotFound
