package broker

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// A power cut or a full disk can leave the embedded server's files damaged, and the
// server starts on them all the same: it cuts a message block's unreadable end off
// without a warning (reported only in the stream's state, as lost data), and a stream
// whose metadata it cannot read it skips, to be made anew by Open over what is left in
// its directory (or empty, when the directory is gone). A queue that lost job messages
// that way leaves their records waiting for ever: nothing delivers them, and they vanish
// at the job TTL with no end and no event (ADR-0076). So, on a store of its own, Open
// looks for signs of it, logs what it finds, and the start's sweep ends the records that
// wait without a queue message failed (LostReason).

// LostReason is the Error of a job ended failed because its queue message is gone from
// a damaged data directory: nothing would ever run it.
const LostReason = "lost: its queue message is gone from the data directory (damaged or removed: a power cut, a full disk); submit it again"

// checkDamage logs the damage the embedded server met in foreman's streams as it
// started, and notes in s.queueSuspect why the queue may have lost job messages ("" when
// nothing says so).
func (s *Store) checkDamage(ctx context.Context) error {
	// Lost data shows only in a stream's detailed state, which lists its deleted
	// messages too: read once, at the start.
	info := func(name string) (*jetstream.StreamInfo, error) {
		st, err := s.js.Stream(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("broker: stream %s: %w", name, err)
		}
		return st.Info(ctx, jetstream.WithDeletedDetails(true))
	}
	var infos []*jetstream.StreamInfo
	for _, name := range []string{QueueStream, jobsStream, artifactsStream} {
		i, err := info(name)
		if err != nil {
			return err
		}
		infos = append(infos, i)
	}
	queue, jobs := infos[0], infos[1]
	for _, info := range infos {
		if lost := info.State.Lost; lost != nil {
			s.log.Error("data directory damaged (a power cut or a full disk): the embedded NATS server cut off the unreadable end of a stream as it started; what was stored there last is lost",
				"stream", info.Config.Name, "lost_bytes", lost.Bytes, "lost_messages", len(lost.Msgs))
			if info.Config.Name == QueueStream {
				s.queueSuspect = "the queue's files had a damaged end, which the server cut off"
			}
		}
	}
	// The queue made at this start, after the records' bucket: its directory was
	// removed, or its metadata could not be read (then its messages may well have been
	// taken up again). At later starts it is a queue like any other: the jobs it lost
	// ended at this one. (Its creation stamp is the server's clock, this host's.)
	if queue.Created.After(jobs.Created) && !queue.Created.Before(s.started) && s.queueSuspect == "" {
		s.queueSuspect = "the queue was made anew at this start (its directory removed, or its metadata unreadable)"
	}
	if jobs.State.Msgs == 0 && queue.State.Msgs > 0 {
		s.log.Error("data directory damaged: the job records are gone (their stream's directory removed, or its files unreadable) while the queue holds jobs; those jobs cannot run and are dropped",
			"stream", jobsStream, "queued_messages", queue.State.Msgs)
	}
	return nil
}

// failLost ends job j, which waits without a queue message while the queue may have lost
// messages (queueSuspect), failed with LostReason, unless it ended meanwhile.
func (s *Store) failLost(ctx context.Context, j *Job) error {
	was := j.State
	_, _, err := s.Modify(ctx, j.ID, func(j *Job) error {
		if j.State.Terminal() {
			return fmt.Errorf("%w: job %s is %s", ErrTerminal, j.ID, j.State)
		}
		j.State = StateFailed
		j.Error = LostReason
		return nil
	})
	switch {
	case err == nil:
		s.dropBody(ctx, j)
		s.log.Error("job lost: its queue message is gone from the damaged data directory; ended failed",
			"job_id", j.ID, "model", j.Model, "was", was, "cause", s.queueSuspect)
	case errors.Is(err, ErrTerminal), errors.Is(err, ErrNotFound):
	default:
		return fmt.Errorf("broker: end lost job %s: %w", j.ID, err)
	}
	return nil
}
