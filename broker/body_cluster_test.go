package broker_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// A request body too large for its queue message is read on delivery from the object
// store, whose object info is a direct get that any replica answers: one behind the
// submit's writes says "not found" of the body (a responder stands for it, answering half
// the gets, the servers the other half). The body is still read, whole, on every delivery: the
// worker fails a job whose body it is told is gone (ADR-0019).
func TestClusterBodyPastALaggingReplica(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster; skipped with -short")
	}
	t.Parallel()
	c := brokertest.NewCluster(t, 3)
	// Each delivery is handed back at once to be read again: the consumer must not give
	// the job up first.
	st := c.Open(t, func(cfg *broker.Config) { cfg.MaxAttempts = 1000 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// An image of 900 KB, base64: past a 1 MiB max payload's inline limit, so stored.
	body, err := json.Marshal(map[string]any{"model": "tiny-a", "stream": false, "messages": []map[string]any{
		{"role": "user", "content": "what is this?", "images": []string{base64.StdEncoding.EncodeToString(artifactBytes(900_000))}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	j, err := st.Submit(ctx, &broker.Job{Model: "tiny-a", Kind: broker.KindChat}, body)
	if err != nil {
		t.Fatal(err)
	}
	if j.BodyRef == "" {
		t.Fatal("the body rides in the queue message: the test shows nothing")
	}
	lagging := c.Connect(t)
	lagArtifactReads(t, c, lagging)
	// The leader's reads, counted as they go by: the store must have asked it.
	leaderReads, err := lagging.SubscribeSync("$JS.API.STREAM.MSG.GET.OBJ_" + broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if err := lagging.Flush(); err != nil {
		t.Fatal(err)
	}
	// The job is leased 20 times, and handed back each time, each time with its whole body;
	// the stand-in answered some of the gets, so the store must have asked the leader.
	tok := token(t, "tiny-a")
	for i := range 20 {
		d, err := st.NextWait(ctx, tok, 10*time.Second)
		if err != nil || d == nil {
			t.Fatalf("lease %d: %v", i, err)
		}
		if !bytes.Equal(d.Body, body) {
			t.Fatalf("lease %d: a body of %d bytes, not the %d submitted", i, len(d.Body), len(body))
		}
		if err := d.Msg.Nak(); err != nil {
			t.Fatalf("hand back lease %d: %v", i, err)
		}
	}
	askedLeader(t, leaderReads)
}
