package broker_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// refuseRecords makes the jobs bucket refuse every record (each is larger than it takes).
func refuseRecords(t *testing.T, b *brokertest.Bundle) {
	t.Helper()
	ctx := ctxT(t)
	js := b.JetStream(t)
	kvs, err := js.Stream(ctx, "KV_"+broker.JobsBucket)
	if err != nil {
		t.Fatal(err)
	}
	cfg := kvs.CachedInfo().Config
	cfg.MaxMsgSize = 16
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
}

// A submit refused for any reason takes back the large body it stored first: a record
// too large to keep, a full queue, a record the bucket refused. Left, the body would sit
// in the object store for a job TTL with no job to own it.
func TestRefusedSubmitLeavesNoStoredBody(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		opts   []brokertest.Option
		before func(t *testing.T, b *brokertest.Bundle)
		job    func(*broker.Job)
		want   error
	}{
		"record too large": {
			job: func(j *broker.Job) {
				j.Webhook = &broker.Webhook{URL: "http://127.0.0.1:9/" + strings.Repeat("a", 20<<10)}
			},
			want: broker.ErrJobTooLarge,
		},
		"queue full": {
			opts:   []brokertest.Option{brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 1 })},
			before: func(t *testing.T, b *brokertest.Bundle) { submit(t, b.Store, "m", `{}`) },
			want:   broker.ErrQueueFull,
		},
		"record refused": {before: refuseRecords},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := newResubmitBundle(t, tc.opts...)
			ctx := ctxT(t)
			if tc.before != nil {
				tc.before(t, b)
			}
			j := &broker.Job{ID: broker.NewID(), Model: "m", Kind: broker.KindChat}
			if tc.job != nil {
				tc.job(j)
			}
			_, err := b.Store.Submit(ctx, j, largeBody("m"))
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("submit: %v, want %v", err, tc.want)
			}
			if info := bodyInfo(t, b, j.ID+"/request"); info != nil {
				t.Fatalf("the refused job's body is still stored: %+v", info)
			}
			if _, _, err := b.Store.Get(ctx, j.ID); !errors.Is(err, broker.ErrNotFound) {
				t.Fatalf("record of the refused job: %v, want ErrNotFound", err)
			}
		})
	}
}

// A submit whose record is refused takes back only the queue message it stored: a
// message of the same job id already queued (another submit of the id, its record on its
// way) was matched as a duplicate, and is not this submit's to delete.
func TestRefusedSubmitKeepsAMessageItDidNotStore(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := &broker.Job{ID: broker.NewID(), Model: "m", Kind: broker.KindChat}
	b.PublishBare(t, j, `{}`)
	refuseRecords(t, b)
	if _, err := b.Store.Submit(ctx, &broker.Job{ID: j.ID, Model: "m", Kind: broker.KindChat}, []byte(`{}`)); err == nil {
		t.Fatal("submit with its record refused succeeded")
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the other submit's one", n, err)
	}
}

// A create answered "exists" for a record no read finds (a try lost to a timeout during an
// election, which the cluster may still apply) is ErrUnavailable, and the submit takes
// back its queue message: its caller is told to try again.
func TestSubmitWhoseRecordIsNotReadableTakesBackItsMessage(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	kv := b.JobRecords(t)
	b.Store.LoseCreateAnswer(jetstream.ErrKeyExists, func(id string) {
		if err := kv.Purge(ctx, "job."+id); err != nil {
			t.Errorf("purge the record: %v", err)
		}
	})
	_, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat}, []byte(`{}`))
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("submit: %v, want ErrUnavailable", err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 0 {
		t.Fatalf("queue holds %d messages (%v), want none", n, err)
	}
}

// Submit refuses a job id that is no ULID and a kind no foreman knows, and stores nothing.
func TestSubmitRefusesABadIDOrKind(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	if _, err := b.Store.Submit(ctx, &broker.Job{ID: "not-a-ulid", Model: "m", Kind: broker.KindChat}, []byte(`{}`)); !errors.Is(err, broker.ErrBadID) {
		t.Fatalf("submit with a bad id: %v, want ErrBadID", err)
	}
	if _, err := b.Store.Submit(ctx, &broker.Job{Model: "m", Kind: "summarize"}, []byte(`{}`)); err == nil {
		t.Fatal("submit of an unknown kind succeeded")
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 0 {
		t.Fatalf("queue holds %d messages (%v), want none", n, err)
	}
	if jobs, _, err := b.Store.List(ctx, broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Fatalf("%d records (%v), want none", len(jobs), err)
	}
}

// A delivery neither acked nor kept in progress comes back after the store's AckWait.
func TestUnackedJobRedeliveredAfterAckWait(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.AckWait = time.Second }))
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	tok := token(t, "m")
	if d, err := b.Store.Next(ctx, tok); err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("first delivery: %+v %v", d, err)
	}
	d, err := b.Store.NextWait(ctx, tok, 15*time.Second)
	if err != nil || d == nil || d.JobID != j.ID || d.NumDelivered != 2 {
		t.Fatalf("after AckWait: %+v %v, want job %s delivered a second time", d, err, j.ID)
	}
}

// A job in retry back-off (NAKed with a delay) stays pending on its consumer; it must not
// hold back the model's next job.
func TestJobInBackOffDoesNotHoldTheQueue(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	first := submit(t, b.Store, "m", `{}`)
	second := submit(t, b.Store, "m", `{}`)
	tok := token(t, "m")
	d, err := b.Store.Next(ctx, tok)
	if err != nil || d == nil || d.JobID != first.ID {
		t.Fatalf("first delivery: %+v %v", d, err)
	}
	if err := d.Msg.NakWithDelay(time.Hour); err != nil {
		t.Fatal(err)
	}
	d, err = b.Store.NextWait(ctx, tok, 10*time.Second)
	if err != nil || d == nil || d.JobID != second.ID {
		t.Fatalf("next with the first job in back-off: %+v %v, want job %s", d, err, second.ID)
	}
}

// Requeue publishes the job again, marked requeued, with its large body stored anew (its
// object may have aged out with the first message), and acks the old message: the job
// holds one place in the queue, also when the requeue is retried.
func TestRequeueKeepsOneMessageWithItsBody(t *testing.T) {
	t.Parallel()
	b := newResubmitBundle(t)
	ctx := ctxT(t)
	j := submitLarge(t, b, "m")
	tok := token(t, "m")
	d, err := b.Store.Next(ctx, tok)
	if err != nil || d == nil || d.JobID != j.ID || d.Requeued {
		t.Fatalf("delivery: %+v %v, want job %s not requeued", d, err, j.ID)
	}
	obs, err := b.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := obs.Delete(ctx, j.BodyRef); err != nil { // aged out
		t.Fatal(err)
	}
	for range 2 { // the second: a retried requeue
		if err := b.Store.Requeue(ctx, d); err != nil {
			t.Fatal(err)
		}
		if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
			t.Fatalf("queue holds %d messages (%v) after the requeue, want the job's one", n, err)
		}
	}
	again, err := b.Store.NextWait(ctx, tok, arrival)
	if err != nil || again == nil || again.JobID != j.ID || !again.Requeued || string(again.Body) != string(largeBody("m")) {
		t.Fatalf("requeued delivery: %+v %v, want job %s requeued with its body", again, err, j.ID)
	}
}

// A queue message whose model does not belong on the subject it came on, or that names
// another job's stored body, is no job foreman queued (ErrUnusable).
func TestLeaseOfAForeignMessageIsUnusable(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	tok := token(t, "m")
	for what, set := range map[string]func(h nats.Header){
		"another model":      func(h nats.Header) { h.Set(broker.HeaderModel, "other") },
		"another job's body": func(h nats.Header) { h.Set(broker.HeaderBodyRef, broker.NewID()+"/request") },
	} {
		m := nats.NewMsg(broker.QueueSubject(tok))
		m.Header.Set(broker.HeaderJobID, broker.NewID())
		m.Header.Set(broker.HeaderModel, "m")
		m.Header.Set(broker.HeaderKind, string(broker.KindChat))
		set(m.Header)
		if _, err := b.JetStream(t).PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
		d, err := b.Store.NextWait(ctx, tok, arrival)
		if !errors.Is(err, broker.ErrUnusable) || d == nil {
			t.Fatalf("%s: %+v %v, want ErrUnusable", what, d, err)
		}
		if err := b.Store.Discard(d, "test"); err != nil {
			t.Fatal(err)
		}
	}
}

// A lease's Seq is the message's place in the queue stream (what DeleteQueued and
// Queued take), not its consumer's count of deliveries.
func TestLeaseSeqIsTheQueueSequence(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	submit(t, b.Store, "a", `{}`)
	j := submit(t, b.Store, "b", `{}`)
	d, err := b.Store.Next(ctx, token(t, "b"))
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("next: %+v %v", d, err)
	}
	p, ok, err := b.Store.Queued(ctx, d.Seq)
	if err != nil || !ok || p.JobID != j.ID {
		t.Fatalf("queue message at the lease's Seq %d: %+v %v %v, want job %s", d.Seq, p, ok, err, j.ID)
	}
}

// Finishing a lease twice (its ack confirmed already) is no error.
func TestFinishTwice(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	submit(t, b.Store, "m", `{}`)
	d, err := b.Store.Next(ctx, token(t, "m"))
	if err != nil || d == nil {
		t.Fatalf("next: %+v %v", d, err)
	}
	for i := range 2 {
		if err := b.Store.Finish(ctx, d); err != nil {
			t.Fatalf("finish %d: %v", i+1, err)
		}
	}
}

// RemoveEnded removes an ended job's message and its stored body, and only its own: a
// message naming another job's body leaves that body alone.
func TestRemoveEndedDropsOnlyItsOwnBody(t *testing.T) {
	t.Parallel()
	b := newResubmitBundle(t)
	ctx := ctxT(t)
	j := submitLarge(t, b, "m")
	p, ok, err := b.Store.OldestOf(ctx, token(t, "m"))
	if err != nil || !ok || p.JobID != j.ID {
		t.Fatalf("the job's message: %+v %v %v", p, ok, err)
	}
	if err := b.Store.RemoveEnded(ctx, p); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 0 {
		t.Fatalf("queue holds %d messages (%v), want none", n, err)
	}
	if info := bodyInfo(t, b, j.BodyRef); info != nil {
		t.Fatalf("the ended job's body is still stored: %+v", info)
	}

	other := submitLarge(t, b, "n")
	m := nats.NewMsg(broker.QueueSubject(token(t, "x")))
	m.Header.Set(broker.HeaderJobID, broker.NewID())
	m.Header.Set(broker.HeaderBodyRef, other.BodyRef)
	if _, err := b.JetStream(t).PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	p, ok, err = b.Store.OldestOf(ctx, token(t, "x"))
	if err != nil || !ok {
		t.Fatalf("the foreign message: %+v %v %v", p, ok, err)
	}
	if err := b.Store.RemoveEnded(ctx, p); err != nil {
		t.Fatal(err)
	}
	if info := bodyInfo(t, b, other.BodyRef); info == nil {
		t.Fatal("removing a message that names another job's body dropped that body")
	}
}

// A message the server's clock dates after now (its reading behind the message's stamp)
// is waited for no longer than RecordGrace: JobOf finds the orphan then, not at its
// caller's deadline.
func TestJobOfWaitsNoLongerThanTheGrace(t *testing.T) {
	t.Parallel()
	// A grace of 2 s: the window also bounds each call's try, which a loaded machine
	// makes last longer than 100 ms.
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.RetryWindow = time.Second }))
	b.Store.ShiftServerClock(-time.Hour)
	ctx := ctxT(t)
	b.PublishBare(t, &broker.Job{ID: broker.NewID(), Model: "m", Kind: broker.KindChat}, `{}`)
	d, err := b.Store.Next(ctx, token(t, "m"))
	if err != nil || d == nil {
		t.Fatalf("next: %+v %v", d, err)
	}
	if _, _, err := b.Store.JobOf(ctx, d); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("JobOf of an orphan: %v, want ErrNotFound", err)
	}
}

// Refresh never rewrites a finished job's record.
func TestRefreshLeavesAFinishedJob(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	b.Store.ShiftServerClock(48 * time.Hour) // every record is due for a refresh
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	_, rev, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateCanceled; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := b.Store.Refresh(ctx, j.ID); ok || err != nil {
		t.Fatalf("refresh of a finished job: %v %v, want no write", ok, err)
	}
	if _, now, err := b.Store.Get(ctx, j.ID); err != nil || now != rev {
		t.Fatalf("record at revision %d (%v), want %d", now, err, rev)
	}
}

// answerStale makes the direct reads of the jobs bucket answer entry for its key, as a
// replica behind its leader would, and "no message" for every other key.
func answerStale(t *testing.T, b *brokertest.Bundle, entries ...jetstream.KeyValueEntry) {
	t.Helper()
	lagStreamReads(t, b, "KV_"+broker.JobsBucket, func(req *nats.Msg) *nats.Msg {
		for _, e := range entries {
			subj := "$KV." + broker.JobsBucket + "." + e.Key()
			if !strings.HasSuffix(req.Subject, "."+subj) {
				continue
			}
			return &nats.Msg{Data: e.Value(), Header: nats.Header{
				jetstream.StreamHeader:   []string{"KV_" + broker.JobsBucket},
				jetstream.SubjectHeader:  []string{subj},
				jetstream.SequenceHeader: []string{strconv.FormatUint(e.Revision(), 10)},
				jetstream.TimeStampHeaer: []string{e.Created().Format(time.RFC3339Nano)},
			}}
		}
		return nil
	})
}

// A Refresh that read the record from a replica behind its leader writes nothing: its
// write is at the revision it read, and the record has moved on since. Written anyway,
// the old record would undo the write that came between.
func TestRefreshPastALaggingReplicaUndoesNothing(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	b.Store.ShiftServerClock(48 * time.Hour)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	queued, err := b.JobRecords(t).Get(ctx, "job."+j.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateWorking; return nil }); err != nil {
		t.Fatal(err)
	}
	answerStale(t, b, queued)
	if _, err := b.Store.Refresh(ctx, j.ID); err != nil {
		t.Fatal(err)
	}
	e, err := b.JobRecords(t).Get(ctx, "job."+j.ID) // a handle of its own: from the leader
	if err != nil {
		t.Fatal(err)
	}
	if got, err := broker.DecodeJob(e.Value()); err != nil || got.State != broker.StateWorking {
		t.Fatalf("record after the refresh: %s (%v), want it working still", e.Value(), err)
	}
}

// Releasing a key whose claim was read from a replica behind its leader (the job's own,
// released and claimed by another job since) leaves the other job's claim: the delete is
// at the revision read.
func TestReleasePastALaggingReplicaKeepsAnotherJobsClaim(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	st, ctx := b.Store, ctxT(t)
	const key = "a key"
	claimKey := "idem." + broker.IdempotencyRef(key)
	mine, theirs := broker.NewID(), broker.NewID()
	if _, created, err := st.ClaimIdempotencyKey(ctx, key, broker.IdempotencyClaim{JobID: mine}); err != nil || !created {
		t.Fatalf("claim: %v %v", created, err)
	}
	old, err := b.JobRecords(t).Get(ctx, claimKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseIdempotencyKey(ctx, key, mine); err != nil {
		t.Fatal(err)
	}
	if _, created, err := st.ClaimIdempotencyKey(ctx, key, broker.IdempotencyClaim{JobID: theirs}); err != nil || !created {
		t.Fatalf("second claim: %v %v", created, err)
	}
	answerStale(t, b, old)
	_ = st.ReleaseIdempotencyKey(ctx, key, mine) // a conflict at most
	e, err := b.JobRecords(t).Get(ctx, claimKey)
	if err != nil {
		t.Fatalf("the other job's claim: %v, want it kept", err)
	}
	var c broker.IdempotencyClaim
	if err := json.Unmarshal(e.Value(), &c); err != nil || c.JobID != theirs {
		t.Fatalf("claim %s (%v), want job %s's", e.Value(), err, theirs)
	}
}

// A record's write stamps its job's claim only at the revision it read: a claim released
// meanwhile (read from a replica behind its leader) is not brought back; and a claim
// another job holds is never stamped by this job's writes.
func TestKeepClaimStampsOnlyTheJobsOwnLiveClaim(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	st, kv, ctx := b.Store, b.JobRecords(t), ctxT(t)

	const other = "another key"
	theirs := broker.NewID()
	if _, _, err := st.ClaimIdempotencyKey(ctx, other, broker.IdempotencyClaim{JobID: theirs}); err != nil {
		t.Fatal(err)
	}
	held, err := kv.Get(ctx, "idem."+broker.IdempotencyRef(other))
	if err != nil {
		t.Fatal(err)
	}
	j, err := st.Submit(ctx, &broker.Job{Model: "m", Kind: broker.KindChat, Idempotency: broker.IdempotencyRef(other)}, []byte(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateWorking; return nil }); err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(ctx, held.Key()); err != nil || e.Revision() != held.Revision() {
		t.Fatalf("another job's claim after this job's write: %v (%v), want it at revision %d", e, err, held.Revision())
	}

	const key = "a key"
	claimKey := "idem." + broker.IdempotencyRef(key)
	id := broker.NewID()
	if _, _, err := st.ClaimIdempotencyKey(ctx, key, broker.IdempotencyClaim{JobID: id}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Submit(ctx, &broker.Job{ID: id, Model: "m", Kind: broker.KindChat, Idempotency: broker.IdempotencyRef(key)}, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	claim, err := kv.Get(ctx, claimKey)
	if err != nil {
		t.Fatal(err)
	}
	cur, rev, err := st.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.ReleaseIdempotencyKey(ctx, key, id); err != nil {
		t.Fatal(err)
	}
	answerStale(t, b, claim)
	if _, _, err := st.ModifyFrom(ctx, cur, rev, func(j *broker.Job) error { j.State = broker.StateWorking; return nil }); err != nil {
		t.Fatal(err)
	}
	if e, err := b.JobRecords(t).Get(ctx, claimKey); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("released claim after a write of its record: %v (%v), want it gone", e, err)
	}
}

// An idempotent retry of a job whose message is queued but whose stored body is gone (a
// submit that took back its body and, in vain, its message; or the body aged out) stores
// the body again for that message, and publishes no second one.
func TestResubmitRestoresAGoneBody(t *testing.T) {
	t.Parallel()
	b := newResubmitBundle(t)
	ctx := ctxT(t)
	j := submitLarge(t, b, "m")
	obs, err := b.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	objects, err := b.JetStream(t).Stream(ctx, "OBJ_"+broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	for what, remove := range map[string]func() error{
		"deleted": func() error { return obs.Delete(ctx, j.BodyRef) },
		"aged out": func() error { // its info gone with it
			meta := "$O." + broker.ArtifactsBucket + ".M." + base64.URLEncoding.EncodeToString([]byte(j.BodyRef))
			return objects.Purge(ctx, jetstream.WithPurgeSubject(meta))
		},
	} {
		if err := remove(); err != nil {
			t.Fatal(err)
		}
		if bodyInfo(t, b, j.BodyRef) != nil {
			t.Fatalf("%s: the body is still there: the test shows nothing", what)
		}
		if _, err := b.Store.Resubmit(ctx, j.ID, asSent(largeBody("m"))); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if bodyInfo(t, b, j.BodyRef) == nil {
			t.Fatalf("%s: the resubmit left the job's message without its body", what)
		}
		if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
			t.Fatalf("%s: queue holds %d messages (%v), want the job's one", what, n, err)
		}
	}
}

// The look for a job's message reads past the other jobs' messages on its subject to the
// end: a job without one (a crash between its two writes) is queued again, not given up
// on after the first message.
func TestResubmitReadsPastOtherJobsMessages(t *testing.T) {
	t.Parallel()
	b := newResubmitBundle(t)
	ctx := ctxT(t)
	for range 3 {
		submit(t, b.Store, "m", `{"model":"m"}`)
	}
	lost := halfSubmitted(t, b, "m")
	if _, err := b.Store.Resubmit(ctx, lost.ID, asSent(largeBody("m"))); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 4 {
		t.Fatalf("queue holds %d messages (%v), want 4: the lost job's queued again", n, err)
	}
}

// Modify re-reads the record and applies fn again when another write came between its
// read and its write.
func TestModifyRetriesAConcurrentWrite(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	kv := b.JobRecords(t)
	j := submit(t, b.Store, "m", `{}`)
	calls := 0
	got, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error {
		calls++
		if calls == 1 { // another writer, between the read and the write
			e, err := kv.Get(ctx, "job."+j.ID)
			if err != nil {
				return err
			}
			if _, err := kv.Put(ctx, "job."+j.ID, e.Value()); err != nil {
				return err
			}
		}
		j.Error = "modified"
		return nil
	})
	if err != nil || calls != 2 || got.Error != "modified" {
		t.Fatalf("modify: %+v %v with fn called %d times, want success on the second", got, err, calls)
	}
}

// A write keeps the job's id, its first start and its end, and stamps At anew.
func TestWriteKeepsIDStartAndEnd(t *testing.T) {
	t.Parallel()
	var ahead atomic.Int64
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.Now = func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }
	}))
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.ID = broker.NewID(); return nil }); err == nil {
		t.Fatal("a write changed the job's id")
	}
	loading, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateLoading; return nil })
	if err != nil || loading.StartedAt == nil || !loading.At.After(j.At) {
		t.Fatalf("start: %+v %v", loading, err)
	}
	ahead.Store(int64(time.Hour))
	working, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.State = broker.StateWorking; return nil })
	if err != nil || working.StartedAt == nil || !working.StartedAt.Equal(*loading.StartedAt) || working.At.Before(loading.At.Add(time.Hour)) {
		t.Fatalf("loading → working: started %v at %v (%v); want started %v, at an hour on", working.StartedAt, working.At, err, loading.StartedAt)
	}
	end := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	done, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error { j.State, j.FinishedAt = broker.StateDone, &end; return nil })
	if err != nil || done.FinishedAt == nil || !done.FinishedAt.Equal(end) {
		t.Fatalf("end: finished %v (%v), want %v as given", done.FinishedAt, err, end)
	}
}

// A write that keeps the state but changes the attempt is a state change to report; one
// that keeps both is marked HeaderSameState.
func TestSameStateMarkFollowsStateAndAttempt(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	id := broker.NewID()
	sub, err := b.Conn.SubscribeSync(broker.StateSubject(id))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Store.Submit(ctx, &broker.Job{ID: id, Model: "m", Kind: broker.KindChat}, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Store.Modify(ctx, id, func(j *broker.Job) error { j.Attempt++; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Store.Modify(ctx, id, func(j *broker.Job) error { j.Error = "note"; return nil }); err != nil {
		t.Fatal(err)
	}
	for i, same := range []bool{false, false, true} {
		m, err := sub.NextMsg(10 * time.Second)
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if got := m.Header.Get(broker.HeaderSameState) != ""; got != same {
			t.Errorf("event %d marked same state: %v, want %v", i, got, same)
		}
	}
}

// A cancel without a reason of a job waiting to retry keeps the error of its last
// attempt; a cancel of a queued job drops its stored body with its message.
func TestCancelOfAWaitingJob(t *testing.T) {
	t.Parallel()
	b := newResubmitBundle(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error {
		j.State, j.Error = broker.StateRetrying, "attempt 1 failed"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Store.Cancel(ctx, j.ID, ""); err != nil || got.State != broker.StateCanceled || got.Error != "attempt 1 failed" {
		t.Fatalf("cancel without a reason: %+v %v, want canceled with the attempt's error", got, err)
	}

	large := submitLarge(t, b, "m")
	if _, err := b.Store.Cancel(ctx, large.ID, "asked"); err != nil {
		t.Fatal(err)
	}
	if info := bodyInfo(t, b, large.BodyRef); info != nil {
		t.Fatalf("the canceled job's body is still stored: %+v", info)
	}
}

// An idempotency key binds a valid job id only, and releasing a key nobody holds is no
// error.
func TestIdempotencyKeyEdges(t *testing.T) {
	t.Parallel()
	st := brokertest.New(t).Store
	ctx := ctxT(t)
	if _, _, err := st.ClaimIdempotencyKey(ctx, "k", broker.IdempotencyClaim{JobID: "not-a-ulid"}); !errors.Is(err, broker.ErrBadID) {
		t.Fatalf("claim for a bad job id: %v, want ErrBadID", err)
	}
	if err := st.ReleaseIdempotencyKey(ctx, "never claimed", broker.NewID()); err != nil {
		t.Fatalf("release of a free key: %v", err)
	}
}

// A queue key's consumer gives up on a message at the store's MaxDeliver, a safety net
// above the worker's own attempts: without the limit JetStream would deliver a job that
// keeps failing for ever, and report no delivery limit for the worker to end it by.
func TestQueueConsumerTakesTheStoresDeliveryLimit(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.MaxAttempts = 4 }))
	ctx := ctxT(t)
	tok := token(t, "m")
	if d, err := b.Store.Next(ctx, tok); d != nil || err != nil {
		t.Fatalf("next of an empty queue: %+v %v", d, err)
	}
	c, err := b.JetStream(t).Consumer(ctx, broker.QueueStream, broker.ConsumerName(tok))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := c.CachedInfo().Config.MaxDeliver, b.Store.Config().MaxDeliver(); got != want {
		t.Fatalf("consumer's MaxDeliver %d, want %d", got, want)
	}
}

// A submit of a job whose body is stored apart announces it without the body, as its
// queue message comes: a worker reads the body from the object store.
func TestOnQueuedGetsNoStoredBody(t *testing.T) {
	t.Parallel()
	b := newResubmitBundle(t)
	got := make(chan broker.Published, 16)
	stop, err := b.Store.OnQueued(func(p broker.Published) { got <- p })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	j := submitLarge(t, b, "m")
	for i := range 2 { // the submit's own call, and NATS's
		select {
		case p := <-got:
			if p.JobID != j.ID || p.Body != nil {
				t.Fatalf("call %d: job %s with %d bytes of body, want job %s without", i, p.JobID, len(p.Body), j.ID)
			}
		case <-ctxT(t).Done():
			t.Fatalf("call %d never came", i)
		}
	}
}

// A submit of a queued job's id again after the queue's duplicate window publishes a
// message the queue stores anew, unless it is full: then the submit fails (its caller
// cannot be told the job has its message), and the job stays as it was.
func TestResubmitOfAQueuedJobIntoAFullQueueFails(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) {
		c.DuplicateWindow, c.MaxQueue = time.Second, 1
	}))
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	var err error
	eventually(t, 30*time.Second, "a submit past the duplicate window refused", func() bool {
		_, err = b.Store.Submit(ctx, &broker.Job{ID: j.ID, Model: "m", Kind: broker.KindChat}, []byte(`{}`))
		return err != nil
	})
	if !errors.Is(err, broker.ErrQueueFull) {
		t.Fatalf("submit: %v, want ErrQueueFull", err)
	}
	if rec, _, err := b.Store.Get(ctx, j.ID); err != nil || rec.State != broker.StateQueued {
		t.Fatalf("record %+v %v, want the job queued still", rec, err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the job's one", n, err)
	}
}

// CancelQueued cancels a waiting job (queued or retrying) and leaves one that started to
// run: its record unchanged, no cancel requested.
func TestCancelQueuedOnlyCancelsAWaitingJob(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	queued := submit(t, b.Store, "m", `{}`)
	if got, err := b.Store.CancelQueued(ctx, queued.ID, "stopping"); err != nil || got.State != broker.StateCanceled || got.Error != "stopping" {
		t.Fatalf("queued job: %+v %v, want canceled", got, err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 0 {
		t.Fatalf("queue holds %d messages (%v) after the cancel, want none", n, err)
	}
	running := submit(t, b.Store, "m", `{}`)
	_, rev, err := b.Store.Modify(ctx, running.ID, func(j *broker.Job) error {
		j.State, j.Attempt = broker.StateWorking, 1
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Store.CancelQueued(ctx, running.ID, "stopping"); !errors.Is(err, broker.ErrStarted) {
		t.Fatalf("running job: %v, want ErrStarted", err)
	}
	got, after, err := b.Store.Get(ctx, running.ID)
	if err != nil || after != rev || got.State != broker.StateWorking || got.CancelRequested != "" {
		t.Fatalf("running job after CancelQueued: %+v at revision %d (was %d), %v: want it untouched", got, after, rev, err)
	}
	if _, err := b.Store.CancelQueued(ctx, queued.ID, "again"); !errors.Is(err, broker.ErrTerminal) {
		t.Fatalf("canceled job: %v, want ErrTerminal", err)
	}
}
