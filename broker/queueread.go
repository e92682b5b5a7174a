package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A work-queue stream accepts no consumer besides the worker's, so the queue is read by
// sequence. One direct get per message cost a round trip each (2.2 s for 50k messages,
// at a start: the first queue view, and the sweep for the sync jobs of dead callers,
// before the first pick). A batched direct get (nats-server 2.11 and later) answers up to
// queueBatch messages to one request, then an end-of-batch status; an older server
// ignores the batch and answers one message, which readQueue then takes one at a time,
// as before. The request names the queue's subjects (next_by_subj), as the reads one
// message at a time did: without it a server answers a request that is no batch with
// the message at exactly seq, "not found" for a removed one, and an older server's read
// ended at the first job that had left the queue (run, canceled), every later one unread.
const (
	// queueBatch is the most messages one read asks for.
	queueBatch = 256
	// queueBatchBytes bounds the bytes of one read's answer (a queue message holds a
	// request body of up to 256 KiB): the server stops after the message that passes it.
	queueBatchBytes = 4 << 20
)

// allSubjects is next_by_subj for every subject of the queue stream (QueueWildcard is its
// only one): the server's own "all subjects" filter, which it reads the store by as fast
// as by no filter (QueueWildcard itself took twice as long).
const allSubjects = ">"

// directGet is a stream's direct-get request, batched.
type directGet struct {
	Seq      uint64 `json:"seq,omitempty"`
	NextFor  string `json:"next_by_subj,omitempty"`
	Batch    int    `json:"batch"`
	MaxBytes int    `json:"max_bytes"`
}

// Headers of a direct get's answer.
const (
	directSubject    = "Nats-Subject"
	directSequence   = "Nats-Sequence"
	directTimeStamp  = "Nats-Time-Stamp"
	directNumPending = "Nats-Num-Pending"
)

// readQueue hands fn the queue's messages from sequence from (0: the first) up to upTo (0:
// the last), oldest first; it returns fn's first error. A read that fails is tried again
// (Store.retry) from the message after the last one handed over.
func (s *Store) readQueue(ctx context.Context, from, upTo uint64, fn func(*jetstream.RawStreamMsg) error) error {
	seq := from
	for {
		var fnErr error
		end := false
		err := s.retry(ctx, func(ctx context.Context) error {
			var err error
			end, err = s.queueBatchGet(ctx, seq, upTo, func(m *jetstream.RawStreamMsg) bool {
				seq = m.Sequence + 1
				fnErr = fn(m)
				return fnErr == nil
			})
			return err
		})
		switch {
		case fnErr != nil:
			return fnErr
		case err != nil:
			return err
		case end || upTo != 0 && seq > upTo:
			return nil
		}
	}
}

// queueBatchGet asks for the queue's messages from seq in one batched direct get, and
// hands each up to upTo (when not 0) to fn until fn says stop. end is true when no
// message is left to read after those handed over (or fn stopped, or one past upTo came).
func (s *Store) queueBatchGet(ctx context.Context, seq, upTo uint64, fn func(*jetstream.RawStreamMsg) bool) (end bool, err error) {
	get := directGet{Seq: max(seq, 1), NextFor: allSubjects, Batch: queueBatch, MaxBytes: queueBatchBytes}
	if s.unbatchedGets {
		get.Batch, get.MaxBytes = 0, 0 // what a server before 2.11 reads of the request
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, attemptTimeout)
		defer cancel()
	}
	got := 0
	var failed error
	err = s.askDirect(ctx, QueueStream, get, func(m *nats.Msg) bool {
		switch status := m.Header.Get("Status"); status {
		case "":
		case "404": // nothing at or after seq
			end = true
			return false
		case "204": // the end of the batch: what is left after it
			pending, perr := strconv.ParseUint(m.Header.Get(directNumPending), 10, 64)
			end = perr == nil && pending == 0 || got == 0
			return false
		case "503":
			failed = nats.ErrNoResponders
			return false
		default:
			failed = fmt.Errorf("broker: read queue from %d: %s %s", seq, status, m.Header.Get("Description"))
			return false
		}
		got++
		raw, rerr := directMsg(m)
		if rerr != nil {
			failed = rerr
			return false
		}
		if upTo != 0 && raw.Sequence > upTo || !fn(raw) {
			end = true
			return false
		}
		// A server without batched gets answered this one message only.
		return m.Header.Get(directNumPending) != ""
	})
	if err == nil {
		err = failed
	}
	return end, err
}

// askDirect sends a direct-get request (req, JSON) to stream, whose any replica answers,
// and hands the answer's messages, status messages included, to fn until fn says no
// more; it returns what ends the answer otherwise (ctx, the connection). A batched
// request (nats-server 2.11 and later) is answered by several messages, the batch's end
// by a status.
func (s *Store) askDirect(ctx context.Context, stream string, req any, fn func(*nats.Msg) bool) error {
	data, err := json.Marshal(req)
	if err != nil {
		return err
	}
	sub, err := s.nc.SubscribeSync(s.nc.NewInbox())
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := s.nc.PublishRequest("$JS.API.DIRECT.GET."+stream, sub.Subject, data); err != nil {
		return err
	}
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return err
		}
		if !fn(m) {
			return nil
		}
	}
}

// directMsg is a direct get's answer as a stream message.
func directMsg(m *nats.Msg) (*jetstream.RawStreamMsg, error) {
	seq, err := strconv.ParseUint(m.Header.Get(directSequence), 10, 64)
	if err != nil {
		return nil, fmt.Errorf("broker: direct get answer without a sequence: %w", err)
	}
	at, err := time.Parse(time.RFC3339Nano, m.Header.Get(directTimeStamp))
	if err != nil {
		return nil, fmt.Errorf("broker: direct get answer without a time: %w", err)
	}
	subject := m.Header.Get(directSubject)
	if subject == "" {
		return nil, errors.New("broker: direct get answer without a subject")
	}
	return &jetstream.RawStreamMsg{Subject: subject, Sequence: seq, Header: m.Header, Data: m.Data, Time: at}, nil
}
