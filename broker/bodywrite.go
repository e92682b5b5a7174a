package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// bodyDeleteWait bounds the delete of a job's request body once the job no longer needs
// it. Nothing waits on the delete but the job's own end: a stream that takes no writes
// (a full disk, whose failing publishes nats-server leaves unanswered) would otherwise
// hold the worker for the caller's whole deadline at every job with a stored body.
const bodyDeleteWait = 3 * time.Second

// putBody stores a request body too large for a queue message (ADR-0019) under the
// rules of the record and queue writes (retryWrite, ADR-0041): it fails at once with
// ErrStoreFailed while a fault stands, and a put that went unanswered is that fault
// when Config.WriteFault reports one (the artifacts stream is one of JobStreams). An
// unanswered put without a fault is ErrUnavailable, a store to try again shortly. It is
// not retried: a large body costs a retry's whole write again.
func (s *Store) putBody(ctx context.Context, ref string, body []byte) error {
	if err := s.fault.standing(s.cfg.WriteFault, s.clock()); err != nil {
		return err
	}
	err := s.putObject(ctx, ref, body)
	// A put without a deadline waits for its chunks' acks the connection's default
	// timeout, then fails with the async publish timeout, which Transient does not know.
	if !Transient(err) && !errors.Is(err, jetstream.ErrAsyncPublishTimeout) {
		return storageErr(err)
	}
	if ferr := s.fault.check(s.cfg.WriteFault, s.clock()); ferr != nil {
		return ferr
	}
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// deleteBody deletes the stored request body ref of job id, which nothing needs any
// more. While the store cannot write (a standing fault) it is not tried: the body waits
// for the object store's TTL, like the other leftovers of ADR-0019. Otherwise the try is
// bounded to bodyDeleteWait, and one that goes unanswered asks for the fault, so the
// next job's delete is skipped at once.
func (s *Store) deleteBody(ctx context.Context, id, ref string) {
	if err := s.fault.standing(s.cfg.WriteFault, s.clock()); err != nil {
		s.log.Info("request body left for the object store's TTL: the job store cannot write", "job_id", id, "err", err)
		return
	}
	ctx, cancel := context.WithTimeout(ctx, bodyDeleteWait)
	defer cancel()
	err := s.artifacts.Delete(ctx, ref)
	if err == nil || errors.Is(err, jetstream.ErrObjectNotFound) {
		return
	}
	if Transient(err) {
		_ = s.fault.check(s.cfg.WriteFault, s.clock())
	}
	s.log.Warn("delete request body; it is left for the object store's TTL", "job_id", id, "err", err)
}
