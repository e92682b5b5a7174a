package worker_test

import (
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// A delivery whose out-of-line request body is gone is settled as any delivery of its
// job is: an orphan (no record) is dropped at once, an ended job's message is acked and
// its record left alone, a job whose cancel was requested ends canceled. Only a job that
// would run fails, "request body lost". The jobs behind it run.
func TestDeliveryWithItsBodyLost(t *testing.T) {
	t.Parallel()
	const dropped = "queue message without a job record (expired, or its submit failed); dropped"
	for _, c := range []struct {
		name   string
		before func(t *testing.T, tb *testBundle, id string) // the record, once the body is gone
		state  broker.State                                  // the record's at the end; "" for none
		final  string                                        // the final marker published; "" for none
	}{
		{"orphan", func(t *testing.T, tb *testBundle, id string) {
			js, err := jetstream.New(tb.b.Conn)
			if err != nil {
				t.Fatal(err)
			}
			kv, err := js.KeyValue(ctxT(t), broker.JobsBucket)
			if err != nil {
				t.Fatal(err)
			}
			if err := kv.Purge(ctxT(t), "job."+id); err != nil {
				t.Fatal(err)
			}
		}, "", ""},
		{"ended", func(t *testing.T, tb *testBundle, id string) {
			// Done, its body dropped by Finish, whose ack failed.
			modify(t, tb, id, func(j *broker.Job) { j.State, j.Attempt = broker.StateWorking, 1 })
			modify(t, tb, id, func(j *broker.Job) { j.State = broker.StateDone })
		}, broker.StateDone, ""},
		{"cancel requested", func(t *testing.T, tb *testBundle, id string) {
			modify(t, tb, id, func(j *broker.Job) { j.CancelRequested = "test: canceled" })
		}, broker.StateCanceled, string(broker.StateCanceled)},
		{"waiting", func(*testing.T, *testBundle, string) {}, broker.StateFailed, string(broker.StateFailed)},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			tb := setup(t)
			ctx := ctxT(t)
			big := `{"model":"tiny-a","messages":[{"role":"user","content":"` + strings.Repeat("a", 2<<20) + `"}]}`
			lost := tb.submit(t, "tiny-a", broker.KindChat, big)
			if lost.BodyRef == "" {
				t.Fatal("the body is queued inline; the test needs it out of line")
			}
			js, err := jetstream.New(tb.b.Conn)
			if err != nil {
				t.Fatal(err)
			}
			obs, err := js.ObjectStore(ctx, broker.ArtifactsBucket)
			if err != nil {
				t.Fatal(err)
			}
			if err := obs.Delete(ctx, lost.BodyRef); err != nil {
				t.Fatal(err)
			}
			c.before(t, tb, lost.ID)
			_, rev, _ := tb.b.Store.Get(ctx, lost.ID)
			stream := watchStream(t, tb.b.Conn, lost.ID)
			next := tb.chat(t, "tiny-a", 2)
			logs := &warnings{}
			tb.start(t, worker.Config{Logger: slog.New(logs)})

			tb.waitState(t, next.ID, broker.StateDone)
			tb.waitQueueEmpty(t)
			// The marker goes out before the ack on the store's connection, this one: past
			// the flush it is in the channel.
			if err := tb.b.Conn.Flush(); err != nil {
				t.Fatal(err)
			}
			var finals []string
			for len(stream.ch) > 0 {
				if f := (<-stream.ch).Header.Get(broker.HeaderFinal); f != "" {
					finals = append(finals, f)
				}
			}
			if want := []string{c.final}; c.final == "" && len(finals) != 0 || c.final != "" && strings.Join(finals, ",") != c.final {
				t.Errorf("final markers %q, want %q", finals, want)
			}
			rec, gotRev, err := tb.b.Store.Get(ctx, lost.ID)
			switch {
			case c.state == "":
				if !errors.Is(err, broker.ErrNotFound) {
					t.Errorf("record %+v (err %v), want none", rec, err)
				}
				if n := logs.count(dropped); n != 1 {
					t.Errorf("dropped %d times, want once (at its first delivery): %s", n, strings.Join(logs.msgs, "; "))
				}
			case err != nil:
				t.Fatal(err)
			case rec.State != c.state:
				t.Errorf("record %s (%q), want %s", rec.State, rec.Error, c.state)
			case c.state == broker.StateDone && gotRev != rev:
				t.Errorf("the ended job's record was written again (revision %d, was %d)", gotRev, rev)
			case c.state == broker.StateFailed && !strings.Contains(rec.Error, "request body lost"):
				t.Errorf("failed with %q, want request body lost", rec.Error)
			}
			if n := len(inferenceCalls(tb.fake)); n != 1 {
				t.Errorf("target called %d times, want once (the next job)", n)
			}
		})
	}
}

// modify rewrites job id's record with set.
func modify(t *testing.T, tb *testBundle, id string, set func(*broker.Job)) {
	t.Helper()
	if _, _, err := tb.b.Store.Modify(ctxT(t), id, func(j *broker.Job) error { set(j); return nil }); err != nil {
		t.Fatal(err)
	}
}
