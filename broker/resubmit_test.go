package broker_test

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/natsd"
)

// resubmitMaxPayload is the server's max payload in these tests: a body twice its size is
// stored apart (Job.BodyRef).
const resubmitMaxPayload = 64 << 10

func newResubmitBundle(t *testing.T, opts ...brokertest.Option) *brokertest.Bundle {
	t.Helper()
	return brokertest.New(t, append([]brokertest.Option{
		brokertest.WithNATS(func(c *natsd.Config) { c.MaxPayload = resubmitMaxPayload }),
	}, opts...)...)
}

// largeBody is a request body for model too large for a queue message.
func largeBody(model string) []byte {
	return []byte(`{"model":"` + model + `","x":"` + strings.Repeat("a", 2*resubmitMaxPayload) + `"}`)
}

func submitLarge(t *testing.T, b *brokertest.Bundle, model string) *broker.Job {
	t.Helper()
	j, err := b.Store.Submit(ctxT(t), &broker.Job{Model: model, Kind: broker.KindChat}, largeBody(model))
	if err != nil || j.BodyRef == "" {
		t.Fatalf("submit: %+v, %v; want a body stored apart", j, err)
	}
	return j
}

// halfSubmitted stores what a submit of a job with a large body stores before a crash
// that loses its queue message: the body, then the record.
func halfSubmitted(t *testing.T, b *brokertest.Bundle, model string) *broker.Job {
	t.Helper()
	ctx := ctxT(t)
	id := broker.NewID()
	j := &broker.Job{ID: id, Model: model, Kind: broker.KindChat, BodyRef: id + "/request"}
	obs, err := b.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	meta := jetstream.ObjectMeta{Name: j.BodyRef, Opts: &jetstream.ObjectMetaOptions{ChunkSize: resubmitMaxPayload / 4}}
	if _, err := obs.Put(ctx, meta, bytes.NewReader(largeBody(model))); err != nil {
		t.Fatal(err)
	}
	b.CreateRecord(t, j)
	return j
}

// bodyInfo reads a stored body's info through a handle of its own, made after any
// lagStreamReads: from the artifacts' leader. nil: the body is gone.
func bodyInfo(t *testing.T, b *brokertest.Bundle, ref string) *jetstream.ObjectInfo {
	t.Helper()
	ctx := ctxT(t)
	obs, err := b.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := obs.GetInfo(ctx, ref)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// An idempotent retry that queues a job again (its first message lost to a crash between
// Submit's two writes) leaves the job as young as its new message, as a requeue does:
// its record and its stored body kept the first submit's age, expired a TTL after it
// while the new message waited, and the job ended in no state (or failed for want of its
// body). Both age from their last write (the streams' MaxAge), so both are written anew.
func TestResubmitRefreshesTheJobsAge(t *testing.T) {
	t.Parallel()
	b := newResubmitBundle(t)
	ctx := ctxT(t)
	lost := halfSubmitted(t, b, "m")
	_, rev, written, err := b.Store.GetWritten(ctx, lost.ID)
	if err != nil {
		t.Fatal(err)
	}
	stored := bodyInfo(t, b, lost.BodyRef)

	if _, err := b.Store.Resubmit(ctx, lost.ID, asSent(largeBody("m"))); err != nil {
		t.Fatal(err)
	}
	got, newRev, rewritten, err := b.Store.GetWritten(ctx, lost.ID)
	if err != nil || got.State != broker.StateQueued || newRev <= rev || !rewritten.After(written) {
		t.Fatalf("record after the resubmit: %+v (%v) at revision %d written %v; before: revision %d written %v",
			got, err, newRev, rewritten, rev, written)
	}
	restored := bodyInfo(t, b, lost.BodyRef)
	if restored == nil || restored.NUID == stored.NUID || !restored.ModTime.After(stored.ModTime) {
		t.Fatalf("body after the resubmit: %+v; before: %+v; want it stored anew", restored, stored)
	}
	again, ok, err := b.Store.OldestOf(ctx, token(t, "m"))
	if err != nil || !ok || again.JobID != lost.ID {
		t.Fatalf("queue after the resubmit: %+v, %v, %v; want the job's new message", again, ok, err)
	}
}

// A retry of a job with a large body looks for its message at every call, inside the
// HTTP request. It reads the queue from the job's submit on, not the jobs queued before
// it on its subject, each read a message with its body.
func TestResubmitReadsTheQueueFromTheJobOn(t *testing.T) {
	t.Parallel()
	const ahead = 20
	b, j := newJobBehind(t, ahead)
	ctx := ctxT(t)
	n := queueReads(t, b, func() {
		if _, err := b.Store.Resubmit(ctx, j.ID, asSent(largeBody("m"))); err != nil {
			t.Fatal(err)
		}
	})
	if n == 0 || n > 2 {
		t.Fatalf("the resubmit read %d queue messages with %d jobs ahead; want the job's own (and one past it at most)", n, ahead)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != ahead+1 {
		t.Fatalf("queue holds %d messages (%v), want %d", n, err, ahead+1)
	}
}

// On a replicated store a replica behind the leader answers "no message" of one it has
// not stored yet. Taken at its word, the resubmit wrote the job's stored body again while
// a worker holding the job's message might be reading it. Here a responder that always
// says so stands for the replica, and the streams' own direct reads are off, so every
// direct read meets it.
func TestResubmitPastALaggingReplica(t *testing.T) {
	t.Parallel()
	for _, stream := range []string{broker.QueueStream, "OBJ_" + broker.ArtifactsBucket} {
		t.Run(stream, func(t *testing.T) {
			t.Parallel()
			b := newResubmitBundle(t)
			ctx := ctxT(t)
			j := submitLarge(t, b, "m")
			stored := bodyInfo(t, b, j.BodyRef)
			lagStreamReads(t, b, stream, func(*nats.Msg) *nats.Msg { return nil })
			if _, err := b.Store.Resubmit(ctx, j.ID, asSent(largeBody("m"))); err != nil {
				t.Fatal(err)
			}
			if got := bodyInfo(t, b, j.BodyRef); got == nil || got.NUID != stored.NUID {
				t.Fatalf("body after the resubmit: %+v, before: %+v; want it untouched", got, stored)
			}
			if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
				t.Fatalf("queue holds %d messages (%v), want the job's one", n, err)
			}
		})
	}
}

// A job that ends between the resubmit's read of its record and its look at the queue
// (here a replica answering the record as it was, queued, stands for that moment) has no
// message because it ended: Finish acked it and dropped its body. The body is not stored
// again for it (it would sit in the object store for a TTL), nor the job queued again.
func TestResubmitOfAJobThatEndedMeanwhile(t *testing.T) {
	t.Parallel()
	b := newResubmitBundle(t)
	ctx := ctxT(t)
	j := submitLarge(t, b, "m")
	queued, err := b.JobRecords(t).Get(ctx, "job."+j.ID)
	if err != nil {
		t.Fatal(err)
	}
	d, err := b.Store.Next(ctx, token(t, "m"))
	if err != nil || d == nil || d.JobID != j.ID {
		t.Fatalf("next: %+v, %v", d, err)
	}
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error {
		j.State, j.Error = broker.StateFailed, "ended"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := b.Store.Finish(ctx, d); err != nil {
		t.Fatal(err)
	}
	if bodyInfo(t, b, j.BodyRef) != nil {
		t.Fatal("Finish left the body: the test shows nothing")
	}
	lagStreamReads(t, b, "KV_"+broker.JobsBucket, func(req *nats.Msg) *nats.Msg {
		subj := "$KV." + broker.JobsBucket + "." + queued.Key()
		if !strings.HasSuffix(req.Subject, "."+subj) {
			return nil
		}
		return &nats.Msg{Data: queued.Value(), Header: nats.Header{
			jetstream.StreamHeader:   []string{"KV_" + broker.JobsBucket},
			jetstream.SubjectHeader:  []string{subj},
			jetstream.SequenceHeader: []string{strconv.FormatUint(queued.Revision(), 10)},
			jetstream.TimeStampHeaer: []string{queued.Created().Format(time.RFC3339Nano)},
		}}
	})
	got, err := b.Store.Resubmit(ctx, j.ID, asSent(largeBody("m")))
	if err != nil {
		t.Fatal(err)
	}
	if info := bodyInfo(t, b, j.BodyRef); info != nil {
		t.Fatalf("the ended job's body stored again: %+v", info)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 0 {
		t.Fatalf("queue holds %d messages (%v), want none", n, err)
	}
	if got.State != broker.StateFailed {
		t.Fatalf("resubmit of an ended job returned it %s, want it as it ended", got.State)
	}
}

// lagStreamReads makes the direct reads of stream meet a replica behind its leader until
// the test ends: the stream's servers stop answering them (handles opened before keep
// asking), and a responder answers each with answer's message, or "no message" for nil.
func lagStreamReads(t *testing.T, b *brokertest.Bundle, stream string, answer func(req *nats.Msg) *nats.Msg) {
	t.Helper()
	ctx := ctxT(t)
	js := b.JetStream(t)
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.AllowDirect = false
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	lagging := connect(t, b)
	respond := func(m *nats.Msg) {
		reply := answer(m)
		if reply == nil {
			reply = &nats.Msg{Header: nats.Header{"Status": []string{"404"}, "Description": []string{"Message Not Found"}}}
		}
		_ = m.RespondMsg(reply)
	}
	for _, subj := range []string{"$JS.API.DIRECT.GET." + stream, "$JS.API.DIRECT.GET." + stream + ".>"} {
		if _, err := lagging.Subscribe(subj, respond); err != nil {
			t.Fatal(err)
		}
	}
	if err := lagging.Flush(); err != nil {
		t.Fatal(err)
	}
}

// connect opens a connection of the test's own to the bundle's server.
func connect(t *testing.T, b *brokertest.Bundle) *nats.Conn {
	t.Helper()
	nc, err := b.Server.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// The look in the queue starts at the job's first record write, by the jobs bucket
// leader's clock, while its message is dated by the queue leader's: on a cluster two
// servers, whose clocks may be apart by more than RecordGrace. Here the look's start is
// moved past the message's time, as such a skew would; the job's message is still found,
// and neither a second copy published (the first one past the duplicate window, as its
// missing message id has it) nor its body stored again under a worker that may read it.
func TestResubmitPastAQueueLeaderClockBehind(t *testing.T) {
	t.Parallel()
	b := newResubmitBundle(t)
	ctx := ctxT(t)
	j := halfSubmitted(t, b, "m")
	key, err := broker.KeyOf(j, largeBody("m"))
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(broker.QueueSubject(key.String()))
	msg.Header.Set(broker.HeaderJobID, j.ID)
	msg.Header.Set(broker.HeaderPriority, string(key.Class))
	msg.Header.Set(broker.HeaderModel, j.Model)
	msg.Header.Set(broker.HeaderKind, string(j.Kind))
	msg.Header.Set(broker.HeaderBodyRef, j.BodyRef)
	if _, err := b.JetStream(t).PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	stored := bodyInfo(t, b, j.BodyRef)

	b.Store.ShiftQueueLook(time.Hour)
	if _, err := b.Store.Resubmit(ctx, j.ID, asSent(largeBody("m"))); err != nil {
		t.Fatal(err)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the job's one", n, err)
	}
	if got := bodyInfo(t, b, j.BodyRef); got == nil || got.NUID != stored.NUID {
		t.Fatalf("body after the resubmit: %+v, before: %+v; want it untouched", got, stored)
	}
}

// A cancel of a queued job removed its message after reading every message queued before
// it on its subject, each with its body: it looks from the job's submit on, as a resubmit
// does.
func TestCancelReadsTheQueueFromTheJobOn(t *testing.T) {
	t.Parallel()
	const ahead = 20
	b, j := newJobBehind(t, ahead)
	ctx := ctxT(t)
	n := queueReads(t, b, func() {
		if _, err := b.Store.Cancel(ctx, j.ID, ""); err != nil {
			t.Fatal(err)
		}
	})
	if n == 0 || n > 2 {
		t.Fatalf("the cancel read %d queue messages with %d jobs ahead; want the job's own (and one past it at most)", n, ahead)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != ahead {
		t.Fatalf("queue holds %d messages (%v), want %d: the canceled job's message removed", n, err, ahead)
	}
}

// newJobBehind makes a store with ahead jobs queued on model m, each with a 16 KiB body,
// then, once they are older than the record grace (a look for a job's message starts a
// RecordGrace before its submit, by the server's clock), a job with a large body behind
// them.
func newJobBehind(t *testing.T, ahead int) (*brokertest.Bundle, *broker.Job) {
	t.Helper()
	// A short window keeps the wait for the grace short; each write (here a try has the
	// whole window) fits a second on a loaded machine, not 100 ms.
	b := newResubmitBundle(t, brokertest.WithStore(func(c *broker.Config) { c.RetryWindow = time.Second }))
	for range ahead {
		submit(t, b.Store, "m", `{"model":"m","x":"`+strings.Repeat("b", 16<<10)+`"}`)
	}
	queued := time.Now()
	eventually(t, 10*time.Second, "the jobs ahead older than the record grace", func() bool {
		return time.Since(queued) > b.Store.RecordGrace()
	})
	return b, submitLarge(t, b, "m")
}

// queueReads counts the reads of the queue stream's messages (direct or at the leader)
// that do makes.
func queueReads(t *testing.T, b *brokertest.Bundle, do func()) int64 {
	t.Helper()
	watch := connect(t, b)
	var subs []*nats.Subscription
	for _, subj := range []string{
		"$JS.API.DIRECT.GET." + broker.QueueStream, "$JS.API.DIRECT.GET." + broker.QueueStream + ".>",
		"$JS.API.STREAM.MSG.GET." + broker.QueueStream,
	} {
		sub, err := watch.SubscribeSync(subj)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, sub)
	}
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}
	do()
	// The reads went by before the flush's answer, and the connection's reader queued
	// them on their subscriptions before it took that answer: counted there, not by a
	// callback that may not have run yet.
	if err := watch.Flush(); err != nil {
		t.Fatal(err)
	}
	var reads int64
	for _, sub := range subs {
		n, _, err := sub.Pending()
		if err != nil {
			t.Fatal(err)
		}
		reads += int64(n)
	}
	return reads
}

// Retries of one Idempotency-Key racing each other each renew the job's record at the
// revision they read: all but one find it written meanwhile. That write renewed the job
// as theirs would have, so each of them succeeds (a retry answered "unavailable" after
// five such losses was a 503 to a client of a healthy store), and the job keeps one
// message.
func TestResubmitsRacingEachOther(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	_, rev, err := b.Store.Get(ctx, j.ID)
	if err != nil {
		t.Fatal(err)
	}
	const racers = 16
	errs := make(chan error, racers)
	start := make(chan struct{})
	for range racers {
		go func() {
			<-start
			got, err := b.Store.Resubmit(ctx, j.ID, asSent([]byte(`{}`)))
			if err == nil && got.State != broker.StateQueued {
				err = errors.New("job not queued: " + string(got.State))
			}
			errs <- err
		}()
	}
	close(start)
	for range racers {
		if err := <-errs; err != nil {
			t.Errorf("racing resubmit: %v", err)
		}
	}
	_, now, err := b.Store.Get(ctx, j.ID)
	if err != nil || now <= rev {
		t.Fatalf("record after the resubmits at revision %d (%v), before %d: want it renewed", now, err, rev)
	}
	if n, err := b.Store.QueueLen(ctx); err != nil || n != 1 {
		t.Fatalf("queue holds %d messages (%v), want the job's one", n, err)
	}
}

// asSent is a Resubmit's body of a job queued with body as it came, whatever its record.
func asSent(body []byte) func(*broker.Job) []byte {
	return func(*broker.Job) []byte { return body }
}

// A resubmit stores and queues the body its caller makes of the job's record (a
// gateway's body naming the model an alias was queued under, ADR-0068), in each of its
// paths: a job without its message (published again, its body stored again when stored
// apart), and one whose message is there and stored body gone (the body stored again).
func TestResubmitQueuesTheBodyOfTheRecord(t *testing.T) {
	t.Parallel()
	bodyOf := func(j *broker.Job) []byte {
		sent := `{"model":"` + j.Model + `"}`
		if j.BodyRef != "" {
			sent = string(largeBody(j.Model))
		}
		return []byte(strings.TrimSuffix(sent, "}") + `,"model":"` + j.Model + `:latest"}`)
	}
	for _, c := range []struct {
		name            string
		stored, message bool
	}{{"inline", false, false}, {"stored", true, false}, {"stored-message-there", true, true}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := newResubmitBundle(t)
			ctx := ctxT(t)
			id := broker.NewID()
			j := &broker.Job{ID: id, Model: "m", Kind: broker.KindChat}
			if c.stored {
				j.BodyRef = id + "/request"
			}
			key, err := broker.KeyOf(j, nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.message {
				msg := nats.NewMsg(broker.QueueSubject(key.String()))
				msg.Header.Set(broker.HeaderJobID, j.ID)
				msg.Header.Set(broker.HeaderPriority, string(key.Class))
				msg.Header.Set(broker.HeaderModel, j.Model)
				msg.Header.Set(broker.HeaderKind, string(j.Kind))
				msg.Header.Set(broker.HeaderBodyRef, j.BodyRef)
				if _, err := b.JetStream(t).PublishMsg(ctx, msg); err != nil {
					t.Fatal(err)
				}
			}
			b.CreateRecord(t, j)
			var asked *broker.Job
			if _, err := b.Store.Resubmit(ctx, id, func(j *broker.Job) []byte { asked = j; return bodyOf(j) }); err != nil {
				t.Fatal(err)
			}
			if asked == nil || asked.ID != id || asked.Model != "m" {
				t.Fatalf("the body was made of %+v, want the job's record", asked)
			}
			want := bodyOf(j)
			got := storedBody(t, b, j.BodyRef)
			if !c.stored {
				m, err := b.JetStream(t).Stream(ctx, broker.QueueStream)
				if err != nil {
					t.Fatal(err)
				}
				raw, err := m.GetLastMsgForSubject(ctx, broker.QueueSubject(key.String()))
				if err != nil {
					t.Fatal(err)
				}
				got = raw.Data
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("queued with the body ending %q, want %q", tail(got), tail(want))
			}
		})
	}
}

// storedBody is the body stored apart as ref, nil when there is none.
func storedBody(t *testing.T, b *brokertest.Bundle, ref string) []byte {
	t.Helper()
	if ref == "" {
		return nil
	}
	ctx := ctxT(t)
	obs, err := b.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	body, err := obs.GetBytes(ctx, ref)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func tail(b []byte) string { return string(b[max(0, len(b)-40):]) }
