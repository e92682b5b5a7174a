package broker_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
)

// HoldResult takes only JSON the record keeps byte for byte, so the result.json served
// from the record is the bytes an object would have held.
func TestHoldResult(t *testing.T) {
	t.Parallel()
	for res, want := range map[string]bool{
		`{"message":{"content":"hi"},"done":true}`: true,
		`{"a":"\u003cb\u003e"}`:                    true,
		`{"a": 1}`:                                 false, // not compact
		`{"a":1}` + "\n":                           false, // trailing newline
		`{"a":"<b>"}`:                              false, // the record would escape < and >
		`{"a":`:                                    false,
		``:                                         false,
	} {
		a, ok := broker.HoldResult([]byte(res))
		if ok != want {
			t.Errorf("HoldResult(%q) = %v, want %v", res, ok, want)
			continue
		}
		if ok && (a.Name != broker.ResultArtifact || a.ContentType != "application/json" || a.Size != int64(len(res)) || !a.Inline) {
			t.Errorf("HoldResult(%q) = %+v", res, a)
		}
	}
}

// GetArtifact serves a held result.json from the record; there is no object.
func TestGetHeldArtifact(t *testing.T) {
	t.Parallel()
	b := brokertest.New(t)
	ctx := ctxT(t)
	j := submit(t, b.Store, "m", `{}`)
	res := []byte(`{"message":{"content":"\u003chi\u003e"},"done":true}`)
	a, ok := broker.HoldResult(res)
	if !ok {
		t.Fatal("result not held")
	}
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error {
		j.Result = res
		j.SetArtifact(a)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got, data, err := b.Store.GetArtifact(ctx, j.ID, broker.ResultArtifact)
	if err != nil || got != a || !bytes.Equal(data, res) {
		t.Fatalf("GetArtifact = %+v %q, %v; want %+v %q", got, data, err, a, res)
	}
	obs, err := b.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obs.GetInfo(ctx, j.ID+"/"+broker.ResultArtifact); !errors.Is(err, jetstream.ErrObjectNotFound) {
		t.Fatalf("object of a held result: %v, want none", err)
	}
	// A record naming a held result it does not carry answers not found, not empty bytes.
	if _, _, err := b.Store.Modify(ctx, j.ID, func(j *broker.Job) error {
		j.Result = nil
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Store.GetArtifact(ctx, j.ID, broker.ResultArtifact); !errors.Is(err, broker.ErrArtifactNotFound) {
		t.Fatalf("held result missing from the record: %v, want ErrArtifactNotFound", err)
	}
}
