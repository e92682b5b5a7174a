package gateway

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
)

// A sync call whose job someone cancels (DELETE /jobs/{id}) is answered 409 so that no
// automatic retry undoes the cancel. The OpenAI and Anthropic SDKs (Stainless) retry a
// 409 on their own, twice by default, unless the answer says X-Should-Retry: false: without
// it the job canceled came back as a new job until the SDK's retries ran out.
func TestCanceledSyncCallSaysDoNotRetry(t *testing.T) {
	t.Parallel()
	cases := []struct{ path, body string }{
		{"/v1/messages", `{"model":"tiny-b","max_tokens":3,"messages":[{"role":"user","content":"hi"}]}`},
		{"/v1/responses", `{"model":"tiny-b","max_output_tokens":3,"input":"hi","stream":true}`},
		{"/v1/chat/completions", `{"model":"tiny-b","messages":[{"role":"user","content":"hi"}]}`},
		{"/api/chat", `{"model":"tiny-b","messages":[{"role":"user","content":"hi"}]}`},
	}
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	states := watchStates(t, b.Broker.Conn)
	release := b.Fake.Hold("tiny-a")
	defer release()
	busy := make(chan rawResponse, 1)
	go func() { busy <- post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "long", "false")) }()
	if err := b.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		answer := make(chan rawResponse, 1)
		go func() { answer <- post(t, ctx, b.URL, tc.path, []byte(tc.body)) }()
		queued := waitState(t, ctx, states, tc.path+" queued", func(j *broker.Job) bool {
			return j.State == broker.StateQueued && j.Model == "tiny-b"
		})
		if resp, body := b.request(t, http.MethodDelete, "/jobs/"+queued.ID, nil); resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: DELETE: %d %s", tc.path, resp.StatusCode, body)
		}
		r := <-answer
		if r.Status != http.StatusConflict {
			t.Errorf("%s: %d %s, want 409", tc.path, r.Status, r.Body)
		}
		if got := r.Header.Get("X-Should-Retry"); got != "false" {
			t.Errorf("%s: X-Should-Retry %q, want \"false\"", tc.path, got)
		}
	}
	release()
	if r := <-busy; r.Status != http.StatusOK {
		t.Errorf("busy request: %d %s", r.Status, r.Body)
	}
}

// A sync call whose job another foreman canceled as abandoned (broker.CallerGoneReason:
// this foreman's presence lapsed while it was out of touch with NATS, a frozen node, and
// the others took it for dead) while its caller still waits here is no cancel anyone
// asked for: it is a 503 to retry, not a 409 telling the SDKs not to retry, and it does
// not say foreman restarted. Seen on a 3-node cluster with a node paused for 75 s: chats
// through the foreman on it got 409 "job canceled: caller gone: foreman restarted".
func TestSyncCallCanceledForALapsedPresenceSaysRetry(t *testing.T) {
	t.Parallel()
	b := newQueuedBundle(t, nil)
	ctx := testCtx(t, 30*time.Second)
	states := watchStates(t, b.Broker.Conn)
	release := b.Fake.Hold("tiny-a")
	defer release()
	busy := make(chan rawResponse, 1)
	go func() { busy <- post(t, ctx, b.URL, "/api/chat", chatBody("tiny-a", "long", "false")) }()
	if err := b.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/api/chat", "/v1/chat/completions"} {
		answer := make(chan rawResponse, 1)
		go func() {
			answer <- post(t, ctx, b.URL, path, []byte(`{"model":"tiny-b","messages":[{"role":"user","content":"hi"}]}`))
		}()
		queued := waitState(t, ctx, states, path+" queued", func(j *broker.Job) bool {
			return j.State == broker.StateQueued && j.Model == "tiny-b"
		})
		// As another foreman's CancelAbandoned does (a store call: the HTTP cancel names
		// its own reason).
		if _, err := b.Broker.Store.Cancel(ctx, queued.ID, broker.CallerGoneReason); err != nil {
			t.Fatalf("%s: cancel: %v", path, err)
		}
		r := <-answer
		if r.Status != http.StatusServiceUnavailable {
			t.Errorf("%s: %d %s, want 503", path, r.Status, r.Body)
		}
		if got := r.Header.Get("X-Should-Retry"); got == "false" {
			t.Errorf("%s: X-Should-Retry %q: the caller should retry", path, got)
		}
		if r.Header.Get("Retry-After") == "" {
			t.Errorf("%s: no Retry-After", path)
		}
		if strings.Contains(string(r.Body), "restarted") {
			t.Errorf("%s: %s: nothing restarted", path, r.Body)
		}
	}
	release()
	if r := <-busy; r.Status != http.StatusOK {
		t.Errorf("busy request: %d %s", r.Status, r.Body)
	}
}
