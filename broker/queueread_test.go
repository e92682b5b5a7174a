package broker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// The backlog reads the queue in batches of a few hundred messages: a queue several
// batches long, with messages removed here and there (a whole batch's worth at one
// place), is read whole, each message once, oldest first, with its headers and time; on
// the embedded server, on one that answers no batch (before 2.11), and on a cluster of
// three with three replicas.
func TestBacklogReadsAQueueOfSeveralBatches(t *testing.T) {
	t.Parallel()
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 10_000 }))
		readsSeveralBatches(t, b.Store, b.JetStream(t))
	})
	// A server before 2.11 ignores the batch and answers one message a request: read so,
	// the queue is still read whole, past the messages removed (the request names the
	// queue's subjects; at a bare seq a server answers only the message stored there).
	t.Run("unbatched", func(t *testing.T) {
		t.Parallel()
		b := brokertest.New(t, brokertest.WithStore(func(c *broker.Config) { c.MaxQueue = 10_000 }))
		b.Store.ReadQueueUnbatched()
		readsSeveralBatches(t, b.Store, b.JetStream(t))
	})
	t.Run("cluster", func(t *testing.T) {
		t.Parallel()
		c := brokertest.NewCluster(t, 3)
		st := c.Open(t, func(cfg *broker.Config) { cfg.MaxQueue = 10_000 })
		js, err := jetstream.New(c.Connect(t))
		if err != nil {
			t.Fatal(err)
		}
		readsSeveralBatches(t, st, js)
	})
}

func readsSeveralBatches(t *testing.T, st *broker.Store, js jetstream.JetStream) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const n = 1_000
	want := map[uint64]broker.QueuedMessage{}
	for i := range n {
		model := fmt.Sprintf("m%d", i%3)
		j := &broker.Job{ID: broker.NewID(), Model: model, Kind: broker.KindChat, Priority: broker.PriorityLow, Program: fmt.Sprintf("p%d", i%2)}
		k, err := broker.KeyOf(j, nil)
		if err != nil {
			t.Fatal(err)
		}
		msg := nats.NewMsg(broker.QueueSubject(k.String()))
		msg.Header.Set(broker.HeaderJobID, j.ID)
		msg.Header.Set(broker.HeaderModel, model)
		msg.Header.Set(broker.HeaderKind, string(j.Kind))
		msg.Header.Set(broker.HeaderPriority, string(j.Priority))
		msg.Header.Set(broker.HeaderProgram, j.Program)
		msg.Data = []byte(`{"model":"` + model + `"}`)
		ack, err := js.PublishMsg(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		want[ack.Sequence] = broker.QueuedMessage{Token: k.String(), Seq: ack.Sequence, JobID: j.ID, Model: model, Kind: j.Kind, Priority: j.Priority, Program: j.Program}
	}
	queue, err := js.Stream(ctx, broker.QueueStream)
	if err != nil {
		t.Fatal(err)
	}
	var first uint64
	for seq := range want {
		if first == 0 || seq < first {
			first = seq
		}
	}
	// The first message, a run longer than a batch, and every seventh one are removed.
	for seq := range want {
		if i := seq - first; i == 0 || i >= 300 && i < 600 || i%7 == 3 {
			if err := queue.DeleteMsg(ctx, seq); err != nil {
				t.Fatal(err)
			}
			delete(want, seq)
		}
	}
	msgs, err := st.Backlog().Refresh(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != len(want) {
		t.Fatalf("backlog read %d messages, want %d", len(msgs), len(want))
	}
	for i, m := range msgs {
		w, ok := want[m.Seq]
		if !ok || i > 0 && m.Seq <= msgs[i-1].Seq {
			t.Fatalf("message %d: seq %d unexpected or out of order", i, m.Seq)
		}
		if m.Enqueued.IsZero() || time.Since(m.Enqueued) > time.Minute {
			t.Fatalf("message %d: enqueued %v", m.Seq, m.Enqueued)
		}
		m.Enqueued = time.Time{}
		if m != w {
			t.Fatalf("message %d read as %+v, want %+v", m.Seq, m, w)
		}
	}
	// The sweep reads the same messages: it finds no dead caller's job among them.
	if n, err := st.CancelAbandoned(ctx); err != nil || n != 0 {
		t.Fatalf("CancelAbandoned: %d, %v", n, err)
	}
}

// A replica behind the queue stream's leader answers the backlog's read of a job just
// queued (a direct get, which any replica serves) with nothing at or after it. The
// backlog passed over it for good: the job, counted by the stream, was never read again,
// and stayed out of GET /queue and had no position for its whole wait. Read from a
// replica that has it, at the next refresh, it is known.
func TestClusterBacklogReadsAJobALaggingReplicaMissed(t *testing.T) {
	c, st, ctx, j := clusterJob(t)
	bl := st.Backlog()
	subj := lagQueueReads(t, c)
	msgs, err := bl.Refresh(ctx, 0)
	if err != nil || len(msgs) != 0 {
		t.Fatalf("backlog read from the lagging replica: %+v, %v; want nothing yet", msgs, err)
	}
	c.UnmapSubject(t, subj) // the replicas have the job now
	msgs, err = bl.Refresh(ctx, 0)
	if err != nil || len(msgs) != 1 || msgs[0].JobID != j.ID {
		t.Fatalf("backlog once the replicas have the job: %+v, %v; want job %s", msgs, err, j.ID)
	}
}

// A job left the middle of its queue (a cancel), and the backlog looks for the known
// message that left (findGone) while the replica that answers its reads is behind the
// leader: it says "not found" of what it has not stored yet. The backlog dropped the
// jobs still waiting with it, for good; the leader's word keeps them.
func TestClusterBacklogKeepsJobsALaggingReplicaLacks(t *testing.T) {
	c, st, ctx, first := clusterJob(t)
	var jobs []*broker.Job
	for range 2 {
		j, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, j)
	}
	canceled, last := jobs[0], jobs[1]
	bl := st.Backlog()
	bl.SetMaxDeleted(0) // no list of deleted messages: what left is looked for
	if msgs, err := bl.Refresh(ctx, 0); err != nil || len(msgs) != 3 {
		t.Fatalf("backlog: %+v, %v; want the three jobs", msgs, err)
	}
	if _, err := st.Cancel(ctx, canceled.ID, "gone"); err != nil {
		t.Fatal(err)
	}
	lagQueueReads(t, c)
	msgs, err := bl.Refresh(ctx, 0)
	if err != nil || len(msgs) != 2 || msgs[0].JobID != first.ID || msgs[1].JobID != last.ID {
		t.Fatalf("backlog read through the lagging replica: %+v, %v; want jobs %s and %s", msgs, err, first.ID, last.ID)
	}
}

// lagQueueReads has every direct get of the queue stream answered "not found", as a
// replica behind its leader answers a read of what it has not stored yet, until
// UnmapSubject of the subject it returns. Which reads is the cluster's mapping, not a
// race with the servers.
func lagQueueReads(t *testing.T, c *brokertest.Cluster) string {
	t.Helper()
	subj := "$JS.API.DIRECT.GET." + broker.QueueStream
	lagging := c.Connect(t)
	standIn := fmt.Sprintf("lagging.%d", lagSubjects.Add(1))
	sub, err := lagging.Subscribe(standIn, func(m *nats.Msg) {
		_ = m.RespondMsg(&nats.Msg{Header: nats.Header{"Status": []string{"404"}, "Description": []string{"Message Not Found"}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := lagging.Flush(); err != nil {
		t.Fatal(err)
	}
	c.MapSubject(t, subj, standIn, 100)
	return subj
}
