package worker_test

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/worker"
)

// resultObject reports whether job id's result.json has an object in FOREMAN_ARTIFACTS.
func (tb *testBundle) resultObject(t *testing.T, id string) bool {
	t.Helper()
	obs, err := tb.b.JetStream(t).ObjectStore(ctxT(t), broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	_, err = obs.GetInfo(ctxT(t), id+"/"+broker.ResultArtifact)
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

// A small result is held in the record alone: the record names result.json, marked
// inline, and no object is written for it (ADR-0033); reading the artifact gives the
// record's bytes.
func TestSmallResultHeldInRecordOnly(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.start(t, worker.Config{})
	j := tb.chat(t, "tiny-a", 1)
	rec := tb.waitState(t, j.ID, broker.StateDone)
	if len(rec.Result) == 0 {
		t.Fatal("done job has no result in its record")
	}
	a, ok := rec.Artifact(broker.ResultArtifact)
	if !ok || !a.Inline || a.ContentType != "application/json" || a.Size != int64(len(rec.Result)) {
		t.Fatalf("result artifact %+v (listed %v), want inline application/json of %d bytes", a, ok, len(rec.Result))
	}
	if tb.resultObject(t, j.ID) {
		t.Error("a result held in the record was written to the object store too")
	}
	got, data, err := tb.b.Store.GetArtifact(ctxT(t), j.ID, broker.ResultArtifact)
	if err != nil || got != a || !bytes.Equal(data, rec.Result) {
		t.Fatalf("GetArtifact = %+v %q, %v; want %+v and the record's result", got, data, err, a)
	}
}

// A result larger than the record holds still goes to the object store, whole.
func TestLargeResultStoredAsObject(t *testing.T) {
	t.Parallel()
	tb := setup(t)
	tb.start(t, worker.Config{})
	j := tb.submit(t, "tiny-a", broker.KindChat, largeChat)
	// The run is 20,000 frames published and read back: 30 s ran out once under CPU
	// stress. Where the result goes is what is checked, not how fast.
	rec := tb.waitStateWithin(t, j.ID, broker.StateDone, 2*time.Minute)
	if len(rec.Result) != 0 {
		t.Fatalf("record holds a %d-byte result, want it only in the object store", len(rec.Result))
	}
	a, ok := rec.Artifact(broker.ResultArtifact)
	if !ok || a.Inline || a.Size <= 64<<10 {
		t.Fatalf("result artifact %+v (listed %v), want an object over 64 KiB", a, ok)
	}
	if !tb.resultObject(t, j.ID) {
		t.Fatal("large result has no object")
	}
	_, data, err := tb.b.Store.GetArtifact(ctxT(t), j.ID, broker.ResultArtifact)
	if err != nil || int64(len(data)) != a.Size || !bytes.Contains(data, []byte(`"done":true`)) {
		t.Fatalf("GetArtifact: %d bytes, %v; want the %d-byte result", len(data), err, a.Size)
	}
}

// largeChat asks the fake for a reply well over the 64 KiB a record holds.
const largeChat = `{"model":"tiny-a","messages":[{"role":"user","content":"long"}],"options":{"num_predict":20000}}`
