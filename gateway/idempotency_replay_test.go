package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"gitea.stevedudenhoeffer.com/steve/foreman/broker"
	"gitea.stevedudenhoeffer.com/steve/foreman/broker/brokertest"
	"gitea.stevedudenhoeffer.com/steve/foreman/ollama/ollamatest"
)

// replayBody is the request the tests below send with one Idempotency-Key: a chat of
// tiny-b, the model they take away from the target.
const replayBody = `{"model":"tiny-b","messages":[{"role":"user","content":"hi"}]}`

// A client whose keyed submit was accepted but whose answer it never read retries with
// the same key and body, as the key is for. Meanwhile the model was deleted at the
// target (ollama rm), or created again as a model that cannot chat: the retry still gets
// its job back, not the 404 or 400 a new request gets now, which would tell the client
// its job was not taken while it is queued (it would submit it again under a new key, or
// report a failure of a job that runs).
func TestKeyedRetryGetsItsJobWhateverTheChecksNowSay(t *testing.T) {
	t.Parallel()
	for _, via := range []string{"http", "nats"} {
		for _, c := range []struct {
			name   string
			change func(t *testing.T, ctx context.Context, b *testBundle)
			status int // what a new request for the model gets now
		}{
			{"deleted", deleteTinyB, http.StatusNotFound},
			{"recreated-without-completion", func(t *testing.T, ctx context.Context, b *testBundle) {
				b.Fake.AddModel(ollamatest.Model{Name: "tiny-b", Embedding: true, Digest: "sha256:" + digestHex('7')})
				refreshInventory(t, ctx, b)
			}, http.StatusBadRequest},
		} {
			t.Run(via+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				b := newTestBundle(t)
				submit := keyedSubmitter(t, b, via)
				ctx := testCtx(t, 30*time.Second)
				first := submit(ctx, replayBody, "k1")
				if first.status != http.StatusAccepted || first.id == "" {
					t.Fatalf("first submit: %s, want 202", first)
				}
				c.change(t, ctx, b)
				if a := submit(ctx, replayBody, "another-key"); a.status != c.status {
					t.Fatalf("a new request after the change: %s, want %d; the test proves nothing", a, c.status)
				}
				retry := submit(ctx, replayBody, "k1")
				if retry.status != http.StatusAccepted || retry.id != first.id || (via == "http" && !retry.replayed) {
					t.Fatalf("retry: %s (replayed %v), want the first job %s replayed", retry, retry.replayed, first.id)
				}
				if n, err := b.Broker.Store.QueueLen(ctx); err != nil || n != 1 {
					t.Fatalf("queue holds %d jobs (%v), want the first one", n, err)
				}
			})
		}
	}
}

// A retry refused by the checks while its first request still holds the key (claimed,
// its job not yet written) waits for that job, as a retry that passes them does, and
// gets it back.
func TestKeyedRetryRefusedByTheChecksWaitsForTheFirstRequestsJob(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	hold := holdSubmits(t, b, 1)
	firstC, retryC := make(chan keyedAnswer, 1), make(chan keyedAnswer, 1)
	go func() { firstC <- httpKeyedSubmit(ctx, b, replayBody, "k1") }()
	first := hold.next(t, ctx, "the first request never claimed its key")
	deleteTinyB(t, ctx, b)
	waiting := recordReads(t, b, first)
	go func() { retryC <- httpKeyedSubmit(ctx, b, replayBody, "k1") }()
	select {
	case <-waiting:
	case a := <-retryC:
		t.Fatalf("retry while the first request holds the key: %s, without waiting for its job %s", a, first)
	case <-ctx.Done():
		t.Fatal("the retry never waited for the first request's job")
	}
	hold.proceed()
	if a := <-firstC; a.status != http.StatusAccepted || a.id != first {
		t.Fatalf("first request: %s, want 202 with %s", a, first)
	}
	if a := <-retryC; a.status != http.StatusAccepted || a.id != first {
		t.Fatalf("retry: %s, want the first request's job %s", a, first)
	}
}

// A keyed request the checks refuse, whose key names no job, is refused as before and
// claims nothing: once the model is back, a request with the key is a new job.
func TestKeyedSubmitRefusedByTheChecksLeavesNoClaim(t *testing.T) {
	t.Parallel()
	for _, via := range []string{"http", "nats"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel()
			b := newTestBundle(t)
			submit := keyedSubmitter(t, b, via)
			ctx := testCtx(t, 30*time.Second)
			deleteTinyB(t, ctx, b)
			if a := submit(ctx, replayBody, "k1"); a.status != http.StatusNotFound {
				t.Fatalf("keyed submit of a deleted model: %s, want 404", a)
			}
			if c, err := b.Broker.Store.IdempotencyKeyClaim(ctx, scopedIdempotencyKey("", "k1")); !errors.Is(err, broker.ErrNotFound) {
				t.Fatalf("the refused request left the claim %+v (%v)", c, err)
			}
			b.Fake.AddModel(ollamatest.Model{Name: "tiny-b"})
			refreshInventory(t, ctx, b)
			a := submit(ctx, replayBody, "k1")
			if a.status != http.StatusAccepted || a.id == "" || a.replayed {
				t.Fatalf("submit once the model is back: %s (replayed %v), want 202 with a new job", a, a.replayed)
			}
			if again := submit(ctx, replayBody, "k1"); again.id != a.id {
				t.Fatalf("its retry: %s, want its job %s", again, a.id)
			}
		})
	}
}

// A key whose claim is orphaned (its foreman was killed between the claim and the job)
// names no job: a request the checks refuse is refused, and does not take the claim over
// to submit the job they refused.
func TestKeyedSubmitRefusedByTheChecksTakesNoOrphanedClaim(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withBroker(brokertest.WithStore(func(c *broker.Config) { c.Exclusive = true })))
	ctx := testCtx(t, 30*time.Second)
	dead := broker.IdempotencyClaim{JobID: broker.NewID(), Boot: broker.NewID(), Within: natsSubmitTimeout}
	if _, created, err := b.Broker.Store.ClaimIdempotencyKey(ctx, scopedIdempotencyKey("", "killed"), dead); err != nil || !created {
		t.Fatalf("claim: %v %v", created, err)
	}
	deleteTinyB(t, ctx, b)
	if a := httpKeyedSubmit(ctx, b, replayBody, "killed"); a.status != http.StatusNotFound {
		t.Fatalf("keyed submit of a deleted model under an orphaned claim: %s, want 404", a)
	}
	if c, err := b.Broker.Store.IdempotencyKeyClaim(ctx, scopedIdempotencyKey("", "killed")); err == nil && c.JobID != dead.JobID {
		t.Fatalf("the refused request claimed the key for %s", c.JobID)
	}
	if jobs, _, err := b.Broker.Store.List(ctx, broker.ListOptions{}); err != nil || len(jobs) != 0 {
		t.Fatalf("jobs after the refusal: %d (%v), want none", len(jobs), err)
	}
	if n, err := b.Broker.Store.QueueLen(ctx); err != nil || n != 0 {
		t.Fatalf("queue holds %d jobs (%v), want none", n, err)
	}
}

// A claim a foreman from before keys were per program made (ADR-0062, ADR-0080) is found
// as a claim of now for a retry the checks refuse: its program's retry gets its job back,
// another program's with the same key and body does not (the refusal stands).
func TestKeyedRetryRefusedByTheChecksFindsAnOldClaimOfItsProgram(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	id := writeLegacyClaimOf(t, ctx, b, "alice", "k1", replayBody, time.Now(), true)
	deleteTinyB(t, ctx, b)
	as := func(program string) []string { return []string{"Idempotency-Key", "k1", HeaderProgram, program} }
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(replayBody), as("bob")...)
	wantJobError(t, "bob's retry with the key of alice's job", resp, out, http.StatusNotFound)
	resp, out = b.request(t, http.MethodPost, "/jobs", []byte(replayBody), as("alice")...)
	var s submitted
	_ = json.Unmarshal(out, &s)
	if resp.StatusCode != http.StatusAccepted || s.JobID != id || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("alice's retry: %d %s, want her job %s replayed", resp.StatusCode, out, id)
	}
}

// A webhook URL the policy took at the first submit and refuses after a restart
// (FOREMAN_WEBHOOK_ALLOW_NETS narrowed) does not keep the retry from its job: the job
// stands either way, and its deliveries meet the policy of now at every dial.
func TestKeyedRetryGetsItsJobAfterTheWebhookPolicyChanged(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	body := `{"model":"tiny-a","messages":[],"state_webhook_url":"http://127.0.0.1:9/hook"}`
	first := jobsSubmit(t, b, body, "Idempotency-Key", "k1")
	// The restarted foreman: the same store and target, the default policy (loopback refused).
	gw, err := New(Config{Store: b.Broker.Store, Target: b.Target, TargetURL: b.Fake.URL, Inventory: b.Inv})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(gw)
	t.Cleanup(srv.Close)
	post := func(body, key string) (int, string, bool) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/jobs", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var s submitted
		_ = json.NewDecoder(resp.Body).Decode(&s)
		return resp.StatusCode, s.JobID, resp.Header.Get("Idempotent-Replayed") == "true"
	}
	if status, _, _ := post(body, "another-key"); status != http.StatusBadRequest {
		t.Fatalf("a new request with the URL after the restart: %d, want 400; the test proves nothing", status)
	}
	if status, id, replayed := post(body, "k1"); status != http.StatusAccepted || id != first || !replayed {
		t.Fatalf("retry after the restart: %d %q (replayed %v), want the first job %s replayed", status, id, replayed, first)
	}
	// A body that is another fault besides is still refused, in the same words as before.
	if status, _, _ := post(`{"model":"tiny-a","messages":{},"state_webhook_url":"http://127.0.0.1:9/hook"}`, "k1"); status != http.StatusBadRequest {
		t.Fatalf("a retry with another fault: %d, want 400", status)
	}
}

// deleteTinyB removes tiny-b from the fake target (ollama rm) and polls it.
func deleteTinyB(t *testing.T, ctx context.Context, b *testBundle) {
	t.Helper()
	b.deleteAtFake(t, ctx, "/api/delete", `{"model":"tiny-b"}`)
	refreshInventory(t, ctx, b)
}

// refreshInventory polls the target, so that the gateway sees its change.
func refreshInventory(t *testing.T, ctx context.Context, b *testBundle) {
	t.Helper()
	if err := b.Inv.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
}

// keyedSubmitter is a submit with an Idempotency-Key by via ("http" or "nats"); over
// HTTP its answer says whether it was replayed.
func keyedSubmitter(t *testing.T, b *testBundle, via string) func(ctx context.Context, body, key string) replayAnswer {
	t.Helper()
	if via == "nats" {
		runNATSSubmit(t, b)
		return func(ctx context.Context, body, key string) replayAnswer {
			return replayAnswer{keyedAnswer: natsKeyedSubmit(ctx, b, body, key)}
		}
	}
	return func(ctx context.Context, body, key string) replayAnswer {
		resp, out := b.request(t, http.MethodPost, "/jobs", []byte(body), "Idempotency-Key", key)
		var s submitted
		_ = json.Unmarshal(out, &s)
		return replayAnswer{keyedAnswer: keyedAnswer{status: resp.StatusCode, id: s.JobID, msg: strings.TrimSpace(string(out))},
			replayed: resp.Header.Get("Idempotent-Replayed") == "true"}
	}
}

// replayAnswer is a keyedAnswer that says whether it was a replay (HTTP only).
type replayAnswer struct {
	keyedAnswer
	replayed bool
}

// An orphaned claim a foreman from before keys were per program left under the key alone
// (its request died between the claim and the record, on a shared NATS where such a
// foreman still claims keys) names no job: a retry the checks refuse looks on, under its
// program's key, as one they pass does (that one takes the orphan over and finds its
// job there). It found the orphan, took it for the key's only word and was refused (404)
// while its program's key named its queued job.
func TestKeyedRetryRefusedByTheChecksLooksPastAnOrphanedOldClaim(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t)
	ctx := testCtx(t, 30*time.Second)
	as := []string{"Idempotency-Key", "k1", HeaderProgram, "alice"}
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(replayBody), as...)
	var first submitted
	_ = json.Unmarshal(out, &first)
	if resp.StatusCode != http.StatusAccepted || first.JobID == "" {
		t.Fatalf("first submit: %d %s", resp.StatusCode, out)
	}
	// An old foreman's claim of the key with the same body, its deadline long past, no job.
	writeLegacyClaimOf(t, ctx, b, "", "k1", replayBody, time.Now().Add(-time.Minute), false)
	deleteTinyB(t, ctx, b)
	resp, out = b.request(t, http.MethodPost, "/jobs", []byte(replayBody), as...)
	var s submitted
	_ = json.Unmarshal(out, &s)
	if resp.StatusCode != http.StatusAccepted || s.JobID != first.JobID || resp.Header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("alice's retry the checks refuse: %d %s, want her job %s replayed", resp.StatusCode, out, first.JobID)
	}
	// Found, not taken over: the request the checks refused writes nothing.
	if _, err := b.Broker.Store.IdempotencyKeyClaim(ctx, "k1"); err != nil {
		t.Fatalf("the old orphaned claim after the refused retry: %v, want it left", err)
	}
}

// A NATS caller proves no token: naming a named token's program, with that program's key
// and body, it is refused, not told the program's job, also when the checks refuse the
// request and only the key could answer it (ADR-0140 reads the key then).
func TestKeyedRetryRefusedByTheChecksTellsNoNamedProgramsJob(t *testing.T) {
	t.Parallel()
	b := newTestBundle(t, withGateway(func(c *Config) { c.AuthTokens = []NamedToken{{Program: "alice", Token: "tokenA"}} }))
	runNATSSubmit(t, b)
	ctx := testCtx(t, 30*time.Second)
	resp, out := b.request(t, http.MethodPost, "/jobs", []byte(replayBody), "Idempotency-Key", "k1", "Authorization", "Bearer tokenA")
	var first submitted
	_ = json.Unmarshal(out, &first)
	if resp.StatusCode != http.StatusAccepted || first.JobID == "" {
		t.Fatalf("alice's submit: %d %s", resp.StatusCode, out)
	}
	deleteTinyB(t, ctx, b)
	asAlice := strings.TrimSuffix(replayBody, "}") + `,"program":"alice"}`
	if a := natsKeyedSubmit(ctx, b, asAlice, "k1"); a.status != http.StatusForbidden || a.id != "" {
		t.Fatalf("a NATS submit naming alice with her key and body: %s, want 403 and not her job %s", a, first.JobID)
	}
}
