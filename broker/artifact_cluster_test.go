package broker_test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// The artifacts' object store answers direct gets too, any replica each chunk: one behind
// the object's writer has neither its info nor its last chunks yet, nor the record's write
// that lists it (here a responder stands for it, racing the replicas to answer each get:
// "not found" for the object, the record as it was before). An artifact stored a moment
// ago still opens, and reads whole: the download of a result is not cut short.
func TestClusterArtifactPastALaggingReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	st := c.Open(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	j, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, []byte(`{"model":"tiny-a"}`))
	if err != nil {
		t.Fatal(err)
	}
	lagging := c.Connect(t)
	record := "$JS.API.DIRECT.GET.KV_" + broker.JobsBucket + ".$KV." + broker.JobsBucket + ".job." + j.ID
	before, err := lagging.RequestWithContext(ctx, record, nil)
	if err != nil || before.Header.Get("Status") != "" {
		t.Fatalf("record before the artifact: %v %v", before, err)
	}
	data := artifactBytes(700_000) // 6 chunks
	if _, err := st.PutArtifact(ctx, j.ID, "out.bin", "application/octet-stream", data); err != nil {
		t.Fatal(err)
	}
	respond(t, lagging, record, &nats.Msg{Header: before.Header, Data: before.Data})
	lagArtifactReads(t, lagging)
	// The leader's reads, counted as they go by: the store must have asked it.
	leaderReads, err := lagging.SubscribeSync("$JS.API.STREAM.MSG.GET.OBJ_" + broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := lagging.Flush(); err != nil {
		t.Fatal(err)
	}
	// The stand-in wins some races and not others: the artifact is read until the store
	// has asked the leader at least once (each read whole and right), 20 times at least.
	for i := 0; ; i++ {
		f, err := st.OpenArtifact(ctx, j.ID, "out.bin")
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		got, err := io.ReadAll(f.Reader(ctx, 0, f.Size))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %d: %d bytes of %d, %v", i, len(got), len(data), err)
		}
		if n, _, _ := leaderReads.Pending(); n > 0 && i >= 20 {
			break
		}
		if i == 500 {
			// The copies of the leader's reads reach this connection by another route
			// than the reads themselves: give the last of them time to come.
			if _, err := leaderReads.NextMsg(5 * time.Second); err != nil {
				t.Fatal("the store never asked the leader in 500 reads: the test shows nothing")
			}
			break
		}
	}
}

// lagArtifactReads answers every direct get of the artifacts' stream on nc "not found", as
// a replica behind its leader does, racing the replicas to answer each, until the test ends.
func lagArtifactReads(t *testing.T, nc *nats.Conn) {
	t.Helper()
	notFound := &nats.Msg{Header: nats.Header{"Status": []string{"404"}, "Description": []string{"Message Not Found"}}}
	direct := "$JS.API.DIRECT.GET.OBJ_" + broker.ArtifactsBucket
	respond(t, nc, direct, notFound)      // by sequence
	respond(t, nc, direct+".>", notFound) // the last of a subject
}

// respond answers every request on subj on nc with answer, until the test ends.
func respond(t *testing.T, nc *nats.Conn, subj string, answer *nats.Msg) {
	t.Helper()
	sub, err := nc.Subscribe(subj, func(m *nats.Msg) { _ = m.RespondMsg(&nats.Msg{Header: answer.Header, Data: answer.Data}) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}
