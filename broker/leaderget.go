package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A key-value bucket answers reads with direct gets, which any replica serves, including
// one that has not caught up with the last writes yet (nats-server has no read-after-write
// for them). On a replicated store such a replica says "not found" for a job submitted a
// moment ago, or for a cancel right after the bucket's leader died: a 404 for a job that
// exists. So a read that finds nothing there asks the stream's leader, through the
// stream's own message-get request, before it says so. A read that finds a record may
// still find an older revision; every write is checked against the revision it read, so
// that costs a retry, never a lost write.

// kvGet is key's value in the jobs bucket, from the stream's leader when the bucket may
// be replicated and the direct get found nothing.
func (s *Store) kvGet(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	e, err := s.kv.Get(ctx, key)
	if !s.mayBeReplicated() || !(errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)) {
		return e, err
	}
	return s.leaderGet(ctx, JobsBucket, key)
}

// mayBeReplicated says whether the store's buckets may have replicas: whenever it is not
// the embedded server's. This foreman's own Replicas does not tell: on a shared NATS the
// foremen each create the buckets with theirs, and one started with 1 may read a bucket
// another raised to 3 (or the operator did).
func (s *Store) mayBeReplicated() bool { return s.cfg.Replicas > 1 || !s.cfg.Exclusive }

// leaderGet reads key's last value in bucket from the stream's leader; a key whose last
// write deleted or purged it is not found, as kv.Get says.
func (s *Store) leaderGet(ctx context.Context, bucket, key string) (jetstream.KeyValueEntry, error) {
	m, err := s.leaderMsg(ctx, "KV_"+bucket, msgGetRequest{LastFor: "$KV." + bucket + "." + key})
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, jetstream.ErrKeyNotFound
	}
	if err != nil {
		return nil, err
	}
	e := &leaderEntry{bucket: bucket, key: key, value: m.Data, rev: m.Seq, created: m.Time, op: jetstream.KeyValuePut}
	switch {
	case bytes.Contains(m.Header, []byte("KV-Operation: DEL")):
		e.op = jetstream.KeyValueDelete
	case bytes.Contains(m.Header, []byte("KV-Operation: PURGE")):
		e.op = jetstream.KeyValuePurge
	}
	if e.op != jetstream.KeyValuePut {
		return nil, jetstream.ErrKeyNotFound // as kv.Get says of a deleted or purged key
	}
	return e, nil
}

// msgGetRequest names a message of a stream: the last one on subject LastFor, or the first
// at or after sequence Seq on subject NextFor.
type msgGetRequest struct {
	Seq     uint64 `json:"seq,omitempty"`
	LastFor string `json:"last_by_subj,omitempty"`
	NextFor string `json:"next_by_subj,omitempty"`
}

// leaderStreamMsg is a stream's message as its leader answered it.
type leaderStreamMsg struct {
	Seq    uint64    `json:"seq"`
	Header []byte    `json:"hdrs"`
	Data   []byte    `json:"data"`
	Time   time.Time `json:"time"`
}

// leaderMsg reads the message req names from stream's leader, through the stream's own
// message-get request (not a direct get, which any replica answers). One it does not have
// is jetstream.ErrMsgNotFound.
func (s *Store) leaderMsg(ctx context.Context, stream string, req msgGetRequest) (*leaderStreamMsg, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, ok := ctx.Deadline(); !ok {
		// Only the leader answers: with none elected yet, nobody does (kv.Get has the
		// same bound by default).
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, attemptTimeout)
		defer cancel()
	}
	msg, err := s.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, data)
	if err != nil {
		return nil, err
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error"`
		Message *leaderStreamMsg    `json:"message"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return nil, fmt.Errorf("broker: decode leader get of %s: %w", stream, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return nil, jetstream.ErrMsgNotFound
		}
		return nil, resp.Error
	}
	if resp.Message == nil {
		return nil, fmt.Errorf("broker: leader get of %s: no message in the answer", stream)
	}
	return resp.Message, nil
}

// leaderEntry is a key's value as the stream's leader answered it.
type leaderEntry struct {
	bucket, key string
	value       []byte
	rev         uint64
	created     time.Time
	op          jetstream.KeyValueOp
}

func (e *leaderEntry) Bucket() string                  { return e.bucket }
func (e *leaderEntry) Key() string                     { return e.key }
func (e *leaderEntry) Value() []byte                   { return e.value }
func (e *leaderEntry) Revision() uint64                { return e.rev }
func (e *leaderEntry) Created() time.Time              { return e.created }
func (e *leaderEntry) Delta() uint64                   { return 0 }
func (e *leaderEntry) Operation() jetstream.KeyValueOp { return e.op }
