package broker_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/nats-io/nats.go"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// The artifacts' object store answers direct gets too, any replica each chunk: one behind
// the object's writer has neither its info nor its last chunks yet, nor the record's write
// that lists it (here a responder stands for it, answering half the gets, the servers the
// other half: "not found" for the object, the record as it was before). An artifact stored
// a moment ago still opens, and reads whole: the download of a result is not cut short.
func TestClusterArtifactPastALaggingReplica(t *testing.T) {
	c, st, ctx, j := clusterJob(t)
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
	lagReads(t, c, lagging, record, &nats.Msg{Header: before.Header, Data: before.Data})
	lagArtifactReads(t, c, lagging)
	// The leader's reads, counted as they go by: the store must have asked it.
	leaderReads, err := lagging.SubscribeSync("$JS.API.STREAM.MSG.GET.OBJ_" + broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := lagging.Flush(); err != nil {
		t.Fatal(err)
	}
	// The artifact is read 20 times, each time whole and right; the stand-in answered
	// some of the gets, so the store must have asked the leader.
	for i := range 20 {
		f, err := st.OpenArtifact(ctx, j.ID, "out.bin")
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		got, err := io.ReadAll(f.Reader(ctx, 0, f.Size))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("read %d: %d bytes of %d, %v", i, len(got), len(data), err)
		}
	}
	askedLeader(t, leaderReads)
}

// lagArtifactReads has every direct get of the artifacts' stream answered "not found" half
// the time, as a replica behind its leader does, until the test ends (lagReads).
func lagArtifactReads(t *testing.T, c *brokertest.Cluster, nc *nats.Conn) {
	t.Helper()
	notFound := &nats.Msg{Header: nats.Header{"Status": []string{"404"}, "Description": []string{"Message Not Found"}}}
	direct := "$JS.API.DIRECT.GET.OBJ_" + broker.ArtifactsBucket
	lagReads(t, c, nc, direct, notFound)      // by sequence
	lagReads(t, c, nc, direct+".>", notFound) // the last of a subject
}
