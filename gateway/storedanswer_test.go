package gateway

import (
	"bytes"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// The answer storedAnswer gives a non-streamed caller whose frames were lost is the one
// the caller gets when they come, byte for byte and with the same Content-Type, for every
// kind it answers: from the record's own copy (a native chat or generate) and from the
// result.json artifact (the /v1 answers end with the newline of a json.Encoder, which the
// record's copy drops).
func TestStoredAnswerIsTheNonStreamedAnswer(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	for _, c := range []struct{ path, body string }{
		{"/api/chat", string(chatBody("tiny-a", "hi", "false"))},
		{"/api/generate", `{"model":"tiny-a","prompt":"hi","stream":false}`},
		{"/v1/chat/completions", `{"model":"tiny-a","messages":[{"role":"user","content":"hi"}]}`},
		{"/v1/completions", `{"model":"tiny-a","prompt":"hi"}`},
		{"/v1/responses", `{"model":"tiny-a","input":"hi"}`},
		{"/v1/messages", `{"model":"tiny-a","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}`},
	} {
		r := post(t, ctx, b.URL, c.path, []byte(c.body))
		if r.Status != http.StatusOK {
			t.Errorf("%s: %d %s", c.path, r.Status, r.Body)
			continue
		}
		id := r.Header.Get(HeaderJobID)
		var j *broker.Job
		eventually(t, 10*time.Second, c.path+"'s job to be stored done", func() bool {
			j, _, _ = b.Broker.Store.Get(ctx, id)
			return j != nil && j.State == broker.StateDone
		})
		res, ct, ok := b.GW.storedAnswer(ctx, j, slog.New(slog.DiscardHandler))
		if !ok {
			t.Errorf("%s: no stored answer (artifacts %+v)", c.path, j.Artifacts)
			continue
		}
		if !bytes.Equal(res, r.Body) {
			t.Errorf("%s: stored answer %q\nwant the answer %q", c.path, res, r.Body)
		}
		if ct != r.CType {
			t.Errorf("%s: stored answer's Content-Type %q, want the answer's %q", c.path, ct, r.CType)
		}
	}
}
