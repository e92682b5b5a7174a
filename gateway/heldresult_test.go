package gateway

import (
	"bytes"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// GET /jobs/{id}/artifacts/result.json serves a small result from the record (no object
// exists for it, ADR-0033) and a large one from its object, with the same headers; GET
// /jobs/{id} lists and embeds result.json in both cases as before.
func TestResultArtifactHeldOrStored(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	startJobsPipeline(t, b)
	ctx := testCtx(t, 30*time.Second)
	obs, err := b.Broker.JetStream(t).ObjectStore(ctx, broker.ArtifactsBucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		body   string
		object bool
	}{
		{"small", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`, false},
		{"large", `{"model":"tiny-a","messages":[{"role":"user","content":"long"}],"options":{"num_predict":20000}}`, true},
	} {
		id := jobsSubmit(t, b, tc.body)
		v := waitJobState(t, b, id, broker.StateDone)
		rec, _, err := b.Broker.Store.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		meta, listed := rec.Artifact(broker.ResultArtifact)
		if !listed || meta.ContentType != "application/json" {
			t.Fatalf("%s: record artifacts %+v, want result.json", tc.name, rec.Artifacts)
		}
		_, oerr := obs.GetInfo(ctx, id+"/"+broker.ResultArtifact)
		if oerr != nil && !errors.Is(oerr, jetstream.ErrObjectNotFound) {
			t.Fatal(oerr)
		}
		if hasObject := oerr == nil; hasObject != tc.object {
			t.Fatalf("%s result: object in %s = %v, want %v", tc.name, broker.ArtifactsBucket, hasObject, tc.object)
		}

		resp, out := b.request(t, http.MethodGet, "/jobs/"+id+"/artifacts/result.json", nil)
		h := resp.Header
		if resp.StatusCode != http.StatusOK || h.Get("Content-Type") != "application/json" ||
			h.Get("Content-Length") != strconv.FormatInt(meta.Size, 10) || h.Get("X-Content-Type-Options") != "nosniff" ||
			h.Get("Content-Security-Policy") != "sandbox" {
			t.Fatalf("%s: GET result.json: %d %v", tc.name, resp.StatusCode, h)
		}
		if int64(len(out)) != meta.Size || !bytes.Contains(out, []byte(`"done":true`)) {
			t.Fatalf("%s: GET result.json: %d bytes, want %d", tc.name, len(out), meta.Size)
		}
		if !bytes.Equal(v.Result, out) {
			t.Errorf("%s: GET /jobs/{id} result differs from result.json", tc.name)
		}
		var av *artifactView
		for i := range v.Artifacts {
			if v.Artifacts[i].Name == broker.ResultArtifact {
				av = &v.Artifacts[i]
			}
		}
		if av == nil || av.ContentType != "application/json" || av.Size != meta.Size || av.Data == nil || *av.Data != string(out) {
			t.Errorf("%s: GET /jobs/{id} artifact %+v, want result.json embedded", tc.name, av)
		}
		resp, _ = b.request(t, http.MethodHead, "/jobs/"+id+"/artifacts/result.json", nil)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Length") != strconv.FormatInt(meta.Size, 10) {
			t.Errorf("%s: HEAD result.json: %d %v", tc.name, resp.StatusCode, resp.Header)
		}
	}
}
