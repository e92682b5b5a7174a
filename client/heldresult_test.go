package client_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/client"
)

// Wait gives a job's whole result whether foreman held it in the record (small: no object
// in FOREMAN_ARTIFACTS, ADR-0033) or stored it as the result.json object (large), and
// Artifact reads the same bytes; Job lists result.json in both cases.
func TestResultHeldOrStored(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	c := newClient(t, f.URL)
	// Not testCtx: the large job alone (20,000 tokens streamed through foreman) takes
	// longer than its 30 s on a loaded machine under -race, and what the test proves has
	// no bound on time. A call that hangs is stopped by go test's -timeout.
	ctx := t.Context()
	js, err := jetstream.New(f.Conn)
	if err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		req    client.SubmitRequest
		object bool
	}{
		{"small", chatJob("tiny-a", "small"), false},
		{"large", client.SubmitRequest{Body: json.RawMessage(
			`{"model":"tiny-a","messages":[{"role":"user","content":"large"}],"options":{"num_predict":20000}}`)}, true},
	} {
		id, err := c.SubmitAsync(ctx, tc.req)
		if err != nil {
			t.Fatal(err)
		}
		res, err := c.Wait(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		chat, err := res.Chat()
		if err != nil || chat.Message.Content == "" || !chat.Done {
			t.Fatalf("%s: Chat() = %+v, %v", tc.name, chat, err)
		}
		art, err := c.Artifact(ctx, id, "result.json")
		if err != nil || !bytes.Equal(art, res.Body) {
			t.Fatalf("%s: Artifact(result.json) = %d bytes, %v; want the %d-byte result", tc.name, len(art), err, len(res.Body))
		}
		j, err := c.Job(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var listed bool
		for _, a := range j.Artifacts {
			listed = listed || (a.Name == "result.json" && a.ContentType == "application/json" && a.Size == int64(len(res.Body)))
		}
		if !listed {
			t.Errorf("%s: Job artifacts %+v, want result.json of %d bytes", tc.name, j.Artifacts, len(res.Body))
		}
		_, oerr := obs.GetInfo(ctx, id+"/result.json")
		if oerr != nil && !errors.Is(oerr, jetstream.ErrObjectNotFound) {
			t.Fatal(oerr)
		}
		if got := oerr == nil; got != tc.object {
			t.Errorf("%s: result object exists = %v, want %v", tc.name, got, tc.object)
		}
	}
}
