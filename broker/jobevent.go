package broker

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
)

// EventKind says what an Event carries.
type EventKind uint8

const (
	// EventFrame is a piece of the target's answer, in order: Data, and on the first
	// frame ContentType.
	EventFrame EventKind = iota + 1
	// EventFinal is the final marker: Err is nil when the job is done, else a *JobError.
	EventFinal
	// EventState is a state change of the job: Job.
	EventState
	// EventGap is a break in the stream (a frame missing, out of order, or dropped on
	// the way): Gap says what. Nothing after it can be trusted.
	EventGap
)

// Event is one thing a JobFeed yields.
type Event struct {
	Kind        EventKind
	Data        []byte // EventFrame
	ContentType string // EventFrame: the target's Content-Type, on the first frame only
	Err         error  // EventFinal: nil for done, else *JobError
	Job         *Job   // EventState
	Gap         string // EventGap
}

// JobError is how a job ended when it did not end done: failed (Status is the target's
// HTTP status, 400-599, or 0 when the target gave none) or canceled (Message is the
// reason).
type JobError struct {
	State   State
	Message string
	Status  int
}

func (e *JobError) Error() string {
	if e.Message == "" {
		return "job " + string(e.State)
	}
	return "job " + string(e.State) + ": " + e.Message
}

// Outcome is how terminal job j ended: nil when done, else a *JobError (without a
// status: the record keeps none).
func Outcome(j *Job) error {
	switch j.State {
	case StateCanceled, StateFailed:
		return &JobError{State: j.State, Message: j.Error}
	}
	return nil
}

// GapDropped is the Gap of messages lost on the way to a JobFeed.
const GapDropped = "messages were dropped (slow consumer)"

// EventDecoder turns the messages of one job's stream and state subjects, in the order
// they came, into Events: it checks that frames carry Foreman-Seq 1, 2, 3… and parses the
// final marker. A JobFeed uses one; it is exported for tests that feed messages by hand.
type EventDecoder struct {
	next uint64 // the Foreman-Seq expected next, minus one
}

// Decode returns the event of m, or false for a message that is none (an undecodable
// state event). dropped tells how many messages were lost on the way so far; it is asked
// at a terminal state only: one seen after a loss is a gap, since the stream before it
// is incomplete.
func (d *EventDecoder) Decode(m *nats.Msg, dropped func() int) (Event, bool) {
	if strings.HasSuffix(m.Subject, ".state") {
		j, err := DecodeJob(m.Data)
		if err != nil {
			return Event{}, false
		}
		if j.State.Terminal() && dropped() > 0 {
			return Event{Kind: EventGap, Gap: GapDropped}, true
		}
		return Event{Kind: EventState, Job: j}, true
	}
	seq, err := strconv.ParseUint(m.Header.Get(HeaderSeq), 10, 64)
	if err != nil {
		return Event{Kind: EventGap, Gap: fmt.Sprintf("frame without a valid %s header", HeaderSeq)}, true
	}
	if seq != d.next+1 {
		return Event{Kind: EventGap, Gap: fmt.Sprintf("expected frame %d, got %d", d.next+1, seq)}, true
	}
	d.next = seq
	if final := m.Header.Get(HeaderFinal); final != "" {
		return Event{Kind: EventFinal, Err: finalOutcome(final, m.Header)}, true
	}
	return Event{Kind: EventFrame, Data: m.Data, ContentType: m.Header.Get(HeaderContentType)}, true
}

// Frames is how many frames (pieces) and markers were taken in order so far.
func (d *EventDecoder) Frames() uint64 { return d.next }

// finalOutcome reads a final marker: anything but done or canceled is a failure, and a
// Foreman-Status outside 400-599 is none.
func finalOutcome(final string, h nats.Header) error {
	switch State(final) {
	case StateDone:
		return nil
	case StateCanceled:
		return &JobError{State: StateCanceled, Message: h.Get(HeaderError)}
	}
	e := &JobError{State: StateFailed, Message: h.Get(HeaderError)}
	if code, err := strconv.Atoi(h.Get(HeaderStatus)); err == nil && code >= 400 && code <= 599 {
		e.Status = code
	}
	return e
}
