package client_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"gitea.stevedudenhoeffer.com/steve/foreman/client"
	"gitea.stevedudenhoeffer.com/steve/foreman/gateway/webhook"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

func TestOllamaCalls(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	c := newClient(t, f.URL)
	ctx := testCtx(t)

	var chunks []string
	cr, err := c.Chat(ctx, client.ChatRequest{Model: "tiny-a", Messages: []client.Message{{Role: "user", Content: "hi"}}},
		func(r *client.ChatResponse) error { chunks = append(chunks, r.Message.Content); return nil })
	want := ollamatest.Reply("tiny-a:latest", "user: hi\n", 5)
	if err != nil || cr.Message.Content != strings.Join(want, "") || !cr.Done {
		t.Fatalf("Chat = %+v, %v", cr, err)
	}
	if got := strings.Join(chunks, "|"); !strings.HasPrefix(got, strings.Join(want, "|")) {
		t.Errorf("chunks %q, want the tokens %q one by one", got, want)
	}

	no := false
	cr, err = c.Chat(ctx, client.ChatRequest{Model: "tiny-a", Stream: &no, Messages: []client.Message{{Role: "user", Content: "hi"}}}, nil)
	if err != nil || cr.Message.Content != strings.Join(want, "") {
		t.Fatalf("Chat stream:false = %+v, %v", cr, err)
	}

	gr, err := c.Generate(ctx, client.GenerateRequest{Model: "tiny-b", Prompt: "why"}, nil)
	if err != nil || gr.Response == "" || !gr.Done {
		t.Fatalf("Generate = %+v, %v", gr, err)
	}

	er, err := c.Embed(ctx, client.EmbedRequest{Model: "tiny-embed", Input: json.RawMessage(`"x"`)})
	if err != nil || len(er.Embeddings) != 1 {
		t.Fatalf("Embed = %+v, %v", er, err)
	}

	tags, err := c.Tags(ctx)
	if err != nil || len(tags.Models) != 3 {
		t.Fatalf("Tags = %+v, %v", tags, err)
	}
	ps, err := c.Ps(ctx)
	if err != nil || len(ps.Models) == 0 {
		t.Fatalf("Ps = %+v, %v", ps, err)
	}

	// Chat on an embedding model: the error reaches the caller typed.
	_, err = c.Chat(ctx, client.ChatRequest{Model: "tiny-embed", Messages: []client.Message{{Role: "user", Content: "hi"}}}, nil)
	var ae *client.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusBadRequest {
		t.Fatalf("Chat on an embedding model = %v, want *APIError 400", err)
	}
}

func TestJobsAPI(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	c := newClient(t, f.URL, client.WithPollInterval(20*time.Millisecond))
	ctx := testCtx(t)

	release := f.Fake.Hold("tiny-a")
	defer release()
	held, err := c.SubmitAsync(ctx, chatJob("tiny-a", "held"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Fake.WaitStarted(ctx, "tiny-a", 1); err != nil {
		t.Fatal(err)
	}
	queued, err := c.SubmitAsync(ctx, client.SubmitRequest{Generate: &client.GenerateRequest{Model: "tiny-b", Prompt: "later"}})
	if err != nil {
		t.Fatal(err)
	}

	list, err := c.Jobs(ctx, client.JobFilter{})
	if err != nil || len(list.Jobs) != 2 || list.Jobs[0].ID != queued || list.Jobs[1].ID != held {
		t.Fatalf("Jobs = %+v, %v; want [queued, held], newest first", list, err)
	}
	list, err = c.Jobs(ctx, client.JobFilter{State: client.StateQueued, Model: "tiny-b"})
	if err != nil || len(list.Jobs) != 1 || list.Jobs[0].Kind != client.KindGenerate {
		t.Fatalf("Jobs(queued, tiny-b) = %+v, %v", list, err)
	}

	events, err := c.Watch(ctx, queued)
	if err != nil {
		t.Fatal(err)
	}
	if j, err := c.Cancel(ctx, queued); err != nil || j.State != client.StateCanceled {
		t.Fatalf("Cancel = %+v, %v; want the canceled job", j, err)
	}
	var last client.Event
	for e := range events {
		last = e
	}
	if last.State != client.StateCanceled {
		t.Fatalf("Watch ended with %+v, want canceled", last)
	}
	var ae *client.APIError
	if _, err := c.Cancel(ctx, queued); !errors.As(err, &ae) || ae.Status != http.StatusConflict {
		t.Fatalf("second Cancel = %v, want 409", err)
	}
	_, err = c.Wait(ctx, queued)
	if !errors.Is(err, client.ErrJobCanceled) || !errors.Is(err, client.ErrJobFailed) {
		t.Fatalf("Wait on a canceled job = %v, want ErrJobCanceled and ErrJobFailed", err)
	}

	release()
	res, err := c.Wait(ctx, held)
	if err != nil {
		t.Fatal(err)
	}
	art, err := c.Artifact(ctx, held, "result.json")
	if err != nil || !bytes.Equal(bytes.TrimSpace(art), bytes.TrimSpace(res.Body)) {
		t.Fatalf("Artifact(result.json) = %s, %v; want the result %s", art, err, res.Body)
	}
	if _, err := c.Job(ctx, "01J00000000000000000000000"); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Fatalf("Job(unknown) = %v, want 404", err)
	}
}

func TestWatch(t *testing.T) {
	t.Parallel()
	f := startForeman(t, foremanConfig{})
	for name, opts := range map[string][]client.Option{
		"nats":    {client.WithNATS(natsConn(t, f)), client.WithPollInterval(never)},
		"polling": {client.WithPollInterval(20 * time.Millisecond)},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c := newClient(t, f.URL, opts...)
			ctx := testCtx(t)
			all, err := c.Watch(ctx, "")
			if err != nil {
				t.Fatal(err)
			}
			release := f.Fake.Hold("tiny-b")
			id, err := c.SubmitAsync(ctx, chatJob("tiny-b", "watch "+name))
			if err != nil {
				t.Fatal(err)
			}
			events, err := c.Watch(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			first := <-events
			release()
			var states []client.State
			for e := range events {
				states = append(states, e.State)
			}
			if first.JobID != id || first.State.Terminal() || len(states) == 0 || states[len(states)-1] != client.StateDone {
				t.Fatalf("first event %+v, then %v; want a running state, ..., done", first, states)
			}
			// Watching every job sees this one finish too (other subtests' jobs pass by).
			for e := range all {
				if e.JobID == id && e.State == client.StateDone {
					return
				}
			}
			t.Fatal("Watch(\"\") closed before the job's done event")
		})
	}
}

func TestUnreachable(t *testing.T) {
	t.Parallel()
	c := newClient(t, "http://127.0.0.1:1")
	_, err := c.Tags(testCtx(t))
	var ce *client.ConnectionError
	if !errors.Is(err, client.ErrUnreachable) || !errors.As(err, &ce) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("Tags = %v, want a *ConnectionError (connection refused)", err)
	}
	if _, err := client.New("127.0.0.1:8080"); err == nil {
		t.Fatal("New accepted a URL without a scheme")
	}
}

func TestSubmitRequestNeedsOneBody(t *testing.T) {
	t.Parallel()
	c := newClient(t, "http://127.0.0.1:1")
	for _, req := range []client.SubmitRequest{
		{},
		{Chat: &client.ChatRequest{Model: "a"}, Generate: &client.GenerateRequest{Model: "a"}},
		{Body: json.RawMessage(`[1]`)},
	} {
		if _, err := c.SubmitAsync(context.Background(), req); err == nil || errors.Is(err, client.ErrUnreachable) {
			t.Errorf("SubmitAsync(%+v) = %v, want a request error before any network", req, err)
		}
	}
}

func TestVerifyWebhook(t *testing.T) {
	t.Parallel()
	body := []byte(`{"job_id":"x","state":"done"}`)
	for _, secret := range []string{testSecret, "raw secret"} {
		now := time.Now()
		sig, err := webhook.Sign(secret, "msg_1", now, body)
		if err != nil {
			t.Fatal(err)
		}
		h := http.Header{}
		h.Set("webhook-id", "msg_1")
		h.Set("webhook-timestamp", strconvI(now.Unix()))
		h.Set("webhook-signature", "v1,bm9wZQ== "+sig) // a rotated-out signature first
		if err := client.VerifyWebhook(secret, h, body, 0); err != nil {
			t.Errorf("VerifyWebhook(%q) = %v", secret, err)
		}
		if err := client.VerifyWebhook(secret, h, append(body, ' '), 0); !errors.Is(err, client.ErrWebhookSignature) {
			t.Errorf("tampered body: %v", err)
		}
		h.Set("webhook-timestamp", strconvI(now.Add(-time.Hour).Unix()))
		if err := client.VerifyWebhook(secret, h, body, 0); !errors.Is(err, client.ErrWebhookTimestamp) {
			t.Errorf("old timestamp: %v", err)
		}
	}
	if err := client.VerifyWebhook(testSecret, http.Header{}, body, 0); !errors.Is(err, client.ErrWebhookHeaders) {
		t.Errorf("no headers: %v", err)
	}
}

// TestVerifyWebhookTakesOnlyCanonicalTimestamps: a delivery whose webhook-timestamp is
// the signed number written otherwise than foreman writes it ("+1700000000",
// "01700000000"), or no number, is refused with ErrWebhookTimestampMalformed, which
// matches ErrWebhookTimestamp as before; the re-written ones verified.
func TestVerifyWebhookTakesOnlyCanonicalTimestamps(t *testing.T) {
	t.Parallel()
	body := []byte(`{"job_id":"x","state":"done"}`)
	now := time.Now()
	sig, err := webhook.Sign(testSecret, "msg_1", now, body)
	if err != nil {
		t.Fatal(err)
	}
	for _, ts := range []string{"+" + strconvI(now.Unix()), "0" + strconvI(now.Unix()), "tomorrow"} {
		h := http.Header{}
		h.Set("webhook-id", "msg_1")
		h.Set("webhook-timestamp", ts)
		h.Set("webhook-signature", sig)
		err := client.VerifyWebhook(testSecret, h, body, 0)
		if !errors.Is(err, client.ErrWebhookTimestampMalformed) || !errors.Is(err, client.ErrWebhookTimestamp) {
			t.Errorf("timestamp %q: %v; want ErrWebhookTimestampMalformed, matching ErrWebhookTimestamp", ts, err)
		}
	}
}

// TestVerifyWebhookRefusesReplays: X-Foreman-Signature covers webhook-id and
// webhook-timestamp, so a captured delivery replayed under a fresh timestamp or another
// id fails, as does an old one; webhook-signature made by the Standard Webhooks library
// still verifies.
func TestVerifyWebhookRefusesReplays(t *testing.T) {
	t.Parallel()
	body := []byte(`{"job_id":"x","state":"done"}`)
	key := []byte("raw secret")
	sent := time.Now().Add(-time.Hour)
	captured := http.Header{}
	captured.Set("webhook-id", "msg_1")
	captured.Set("webhook-timestamp", strconvI(sent.Unix()))
	captured.Set("X-Foreman-Signature", webhook.ForemanSignature(key, "msg_1", sent, body))
	if err := client.VerifyWebhook("raw secret", captured, body, 2*time.Hour); err != nil {
		t.Fatalf("X-Foreman-Signature alone: %v", err)
	}
	if err := client.VerifyWebhook("raw secret", captured, body, 0); !errors.Is(err, client.ErrWebhookTimestamp) {
		t.Errorf("an hour-old delivery: %v, want ErrWebhookTimestamp", err)
	}
	fresh := captured.Clone()
	fresh.Set("webhook-timestamp", strconvI(time.Now().Unix()))
	if err := client.VerifyWebhook("raw secret", fresh, body, 0); !errors.Is(err, client.ErrWebhookSignature) {
		t.Errorf("replayed under a fresh timestamp: %v, want ErrWebhookSignature", err)
	}
	otherID := captured.Clone()
	otherID.Set("webhook-id", "msg_2")
	if err := client.VerifyWebhook("raw secret", otherID, body, 2*time.Hour); !errors.Is(err, client.ErrWebhookSignature) {
		t.Errorf("replayed under another id: %v, want ErrWebhookSignature", err)
	}

	wh, err := standardwebhooks.NewWebhook(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	sig, err := wh.Sign("msg_3", now, body)
	if err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	h.Set("webhook-id", "msg_3")
	h.Set("webhook-timestamp", strconvI(now.Unix()))
	h.Set("webhook-signature", sig)
	if err := client.VerifyWebhook(testSecret, h, body, 0); err != nil {
		t.Errorf("a signature of the Standard Webhooks library: %v", err)
	}
}

func TestVerifyWebhookRefusesAnEmptySecret(t *testing.T) {
	t.Parallel()
	body := []byte(`{"job_id":"x","state":"done"}`)
	now := time.Now()
	h := http.Header{}
	h.Set("webhook-id", "msg_1")
	h.Set("webhook-timestamp", strconvI(now.Unix()))
	// Signed with the empty key, which an empty secret must not accept.
	h.Set("X-Foreman-Signature", webhook.ForemanSignature(nil, "msg_1", now, body))
	raw, _ := hex.DecodeString(strings.TrimPrefix(h.Get("X-Foreman-Signature"), "sha256="))
	h.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(raw))
	for _, secret := range []string{"", "whsec_"} {
		if err := client.VerifyWebhook(secret, h, body, 0); !errors.Is(err, client.ErrWebhookSecret) {
			t.Errorf("VerifyWebhook(%q) = %v, want ErrWebhookSecret", secret, err)
		}
	}
}

func strconvI(n int64) string { b, _ := json.Marshal(n); return string(b) }

// TestNoServerDependency keeps nats-server (and foreman's server side) out of the builds
// of the client's users.
func TestNoServerDependency(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "gitea.stevedudenhoeffer.com/steve/foreman/client").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, dep := range strings.Fields(string(out)) {
		if strings.Contains(dep, "nats-server") || strings.HasSuffix(dep, "foreman/gateway") ||
			strings.HasSuffix(dep, "foreman/worker") || strings.HasSuffix(dep, "broker/natsd") {
			t.Errorf("the client package depends on %s", dep)
		}
	}
	if !strings.Contains(string(out), "github.com/nats-io/nats.go\n") {
		t.Errorf("go list output does not look like a dependency list:\n%s", out)
	}
}
